"""CLIP (`CLIPModel`) -> model=clip: two pre-norm towers (TextTransformer + PatchEncoder), fusion none.

    text_model.embeddings (token, position)   -> text_encoder word / position embeddings (no embedding LayerNorm)
    text_model.encoder.layers.i (layer_norm1/2, self_attn, mlp) -> text_encoder.stack.blocks.i
    text_model.final_layer_norm               -> text_encoder.stack.norm
    vision_model.embeddings (patch conv without bias, class_embedding, positions) -> vision_encoder
    vision_model.pre_layrnorm                 -> vision_encoder.embed_norm
    vision_model.encoder.layers.i             -> vision_encoder.stack.blocks.i
    vision_model.post_layernorm               -> vision_encoder.stack.norm

Pixels: the vision encoder re-normalises the data's [-1, 1] pixels to the checkpoint's image_mean /
image_std (its preprocessor_config.json, else OpenAI's). The text tower is causal with QuickGELU and pools the last real token (CLIP's EOS token: the same
position whenever EOS ends the sequence, as CLIP's tokenizer does). The vision tower pools [CLS]
after the final LayerNorm (= CLIP's `pooler_output`); its `tokens` are all normalised, whereas HF's
`last_hidden_state` is not. `text_projection`, `visual_projection` and `logit_scale` belong to
mmbench's ITC objective (its own projections), so they are reported as unused.
"""

from __future__ import annotations

from mmbench.models.convert.common import StateMap, activation, resize_grid
from mmbench.models.fusion.none import NoFusion
from mmbench.models.layers import cls_pool, last_token_pool
from mmbench.models.text import TextTransformer
from mmbench.models.vision.patch import PatchEncoder

# OpenAI CLIP's pixel statistics (every CLIP checkpoint's preprocessor_config.json has them)
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

MODEL_TYPE = "clip"
PARTS = {"text_encoder": TextTransformer, "vision_encoder": PatchEncoder, "fusion": NoFusion}


def sizes(config) -> dict:
    t, v = config.text_config, config.vision_config
    return {
        "dim": v.hidden_size,
        "vision_dim": v.hidden_size,
        "heads": v.num_attention_heads,
        "vision_heads": v.num_attention_heads,
        "vision_depth": v.num_hidden_layers,
        "text_dim": t.hidden_size,
        "text_heads": t.num_attention_heads,
        "text_depth": t.num_hidden_layers,
        "fusion_depth": 0,
        "patch_size": v.patch_size,
        "prenorm": True,
    }


def part_kwargs(config, processor: dict) -> dict[str, dict]:
    t, v = config.text_config, config.vision_config
    return {
        "text_encoder": dict(
            mlp_ratio=t.intermediate_size / t.hidden_size,
            norm_eps=t.layer_norm_eps,
            act_layer=activation(t.hidden_act),
            embed_norm=False,
            causal=True,
            pooling=last_token_pool,
        ),
        "vision_encoder": dict(
            mlp_ratio=v.intermediate_size / v.hidden_size,
            norm_eps=v.layer_norm_eps,
            act_layer=activation(v.hidden_act),
            patch_bias=False,
            embed_norm=True,
            pooling=cls_pool,
            pixel_mean=processor.get("image_mean", CLIP_MEAN),
            pixel_std=processor.get("image_std", CLIP_STD),
        ),
    }


def _tower(sm: StateMap, part: str, src: str, depth: int) -> None:
    for i in range(depth):
        s, d = f"{src}.encoder.layers.{i}", f"stack.blocks.{i}"
        sm.attention(
            part,
            f"{d}.sublayers.self_attn",
            f"{s}.self_attn.q_proj",
            f"{s}.self_attn.k_proj",
            f"{s}.self_attn.v_proj",
            f"{s}.self_attn.out_proj",
        )
        sm.affine(part, f"{d}.norms.self_attn", f"{s}.layer_norm1")
        sm.affine(part, f"{d}.sublayers.mlp.fc1", f"{s}.mlp.fc1")
        sm.affine(part, f"{d}.sublayers.mlp.fc2", f"{s}.mlp.fc2")
        sm.affine(part, f"{d}.norms.mlp", f"{s}.layer_norm2")


def convert(sm: StateMap, config, model) -> None:
    text, vision = model.text_encoder, model.vision_encoder
    positions = sm.get("text_model.embeddings.position_embedding.weight")
    if text.max_len > positions.shape[0]:
        raise ValueError(f"data.max_text_len={text.max_len} exceeds CLIP's {positions.shape[0]} text positions")
    sm.copy("text_encoder", "word_embeddings.weight", "text_model.embeddings.token_embedding.weight")
    sm.put("text_encoder", "position_embeddings.weight", positions[: text.max_len])
    _tower(sm, "text_encoder", "text_model", config.text_config.num_hidden_layers)
    sm.affine("text_encoder", "stack.norm", "text_model.final_layer_norm")

    grid = int(round(vision.num_patches**0.5))
    sm.copy("vision_encoder", "patch_embed.weight", "vision_model.embeddings.patch_embedding.weight")
    sm.put("vision_encoder", "cls_token", sm.get("vision_model.embeddings.class_embedding").view(1, 1, -1))
    pos = sm.get("vision_model.embeddings.position_embedding.weight")  # (1 + G*G, D)
    sm.put("vision_encoder", "position_embeddings", resize_grid(pos, grid, mode="bicubic")[None])
    sm.affine("vision_encoder", "embed_norm", "vision_model.pre_layrnorm")
    _tower(sm, "vision_encoder", "vision_model", config.vision_config.num_hidden_layers)
    sm.affine("vision_encoder", "stack.norm", "vision_model.post_layernorm")
