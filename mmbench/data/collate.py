"""The collator: a list of dataset examples -> the tensors of the batch schema (`mmbench.data.columns`).

Which fields a batch has follows from the dataset columns its first example carries
(`columns.fields_from`); every tensor takes its dtype and padding value from `columns.FIELDS`.
Texts are tokenised here and padded to the longest in the batch, objects to the most in the batch
(at least 1), fact lists to the data's widest row. Images (`pixel_values`, and `pixel_values_right` of
two-image examples) are stacked and normalised to [-1, 1] (`pixel_values`).
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch

from mmbench.data import columns as schema
from mmbench.data.batch import Batch


def pixel_values(images: list[np.ndarray]) -> torch.Tensor:
    """(B, 3, H, W) float32 in [-1, 1] of B images (H, W, 3) uint8: the `pixel_values` normalisation."""
    # in place, then viewed as (B, 3, H, W) with channels-last strides: the same values and strides as
    # `stacked.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)` at half its cost (docs/performance.md)
    stacked = torch.from_numpy(np.stack(images)).float()  # (B, H, W, 3)
    return stacked.div_(127.5).sub_(1.0).permute(0, 3, 1, 2)  # (B, 3, H, W)


class Collator:
    """Tokenises, pads to the longest item and stacks a list of examples into the batch contract."""

    def __init__(self, tokenizer, num_answers: int, facts_width: int = 0):
        self.tokenizer = tokenizer
        self.num_answers = num_answers
        self.facts_width = facts_width  # widest `image_facts` row of the data

    def _text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        return ids, mask

    def __call__(self, items: list[dict]) -> Batch:
        fields = schema.fields_from(schema.columns_of_item(items[0]))
        B = len(items)
        batch: Batch = {
            "pixel_values": pixel_values([it["image"] for it in items]),
            "image_id": schema.values("image_id", [int(it["image_id"]) for it in items]),
        }
        if "pixel_values_right" in fields:  # two-image examples (NLVR2): the right image, normalised alike
            batch["pixel_values_right"] = pixel_values([it["image_right"] for it in items])
        captions = [it["caption"] for it in items]
        if "negative_ids" in fields:  # one call: captions and their negatives padded to the same T
            negatives = [it["negative"] for it in items]
            ids, mask = self._text(captions + negatives)
            batch["input_ids"], batch["attention_mask"] = ids[:B], mask[:B]
            batch["negative_ids"], batch["negative_mask"] = ids[B:], mask[B:]
            batch["has_negative"] = schema.values("has_negative", [bool(t) for t in negatives])
        else:
            batch["input_ids"], batch["attention_mask"] = self._text(captions)
        if "text_claim" in fields:
            batch["text_claim"] = schema.values("text_claim", [it["claim"] for it in items])
            facts = schema.padded("image_facts", B, self.facts_width)  # fixed width: gatherable under DDP
            for i, it in enumerate(items):  # ragged lists -> padded tensor (collation, not a hot path)
                facts[i, : len(it["facts"])] = schema.values("image_facts", it["facts"])
            batch["image_facts"] = facts
        for name, key in schema.stacked_fields(fields):  # per-caption / per-image values, as they are
            cast(dict, batch)[name] = schema.values(name, [it[key] for it in items])  # a name from the schema
        if "answer" in fields:
            batch["question_ids"], batch["question_mask"] = self._text([it["question"] for it in items])
            answer = schema.values("answer", [it["answer"] for it in items])
            scores = schema.padded("answer_scores", B, self.num_answers)
            if "answer_soft" in items[0]:  # several annotator answers: VQAv2 soft scores
                for i, it in enumerate(items):
                    for a, score in it["answer_soft"]:
                        scores[i, a] = score
            else:
                known = answer >= 0
                scores[known.nonzero().squeeze(1), answer[known]] = 1.0
            batch["answer"], batch["answer_scores"] = answer, scores
            # generative VQA: "[CLS] question answer [SEP]"; the answer starts where the question's [SEP] was
            # (the tokenizers split on whitespace first, so "question answer" = question tokens + answer tokens)
            batch["qa_ids"], batch["qa_mask"] = self._text([f"{it['question']} {it['answer_text']}" for it in items])
            batch["answer_start"] = batch["question_mask"].sum(1) - 1  # (B,)
        if "region_boxes" in fields:
            R = max(1, max(len(it["boxes"]) for it in items))
            boxes, mask = schema.padded("region_boxes", B, R, 4), schema.padded("region_mask", B, R)
            labels = schema.padded("region_labels", B, R) if "region_labels" in fields else None
            feats = None
            if "region_feats" in fields:
                feats = schema.padded("region_feats", B, R, int(np.asarray(items[0]["region_feats"]).shape[-1]))
            for i, it in enumerate(items):  # ragged per-object lists -> padded tensors (collation, not a hot path)
                n = len(it["boxes"])
                if n:
                    boxes[i, :n] = torch.tensor(np.asarray(it["boxes"], dtype=np.float32))
                    mask[i, :n] = True
                    if labels is not None:
                        labels[i, :n] = schema.values("region_labels", it["labels"])
                    if feats is not None:
                        feats[i, :n] = torch.from_numpy(np.asarray(it["region_feats"], dtype=np.float32))
            batch["region_boxes"], batch["region_mask"] = boxes, mask
            if labels is not None:
                batch["region_labels"] = labels
            if feats is not None:
                batch["region_feats"] = feats
        return batch
