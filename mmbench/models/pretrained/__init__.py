"""Pretrained encoders and hub access (local directory or Hugging Face hub id, offline-safe)."""
