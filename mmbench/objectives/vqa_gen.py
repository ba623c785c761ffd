"""Generative VQA: the answer as text the model generates after the question, as BLIP's answer decoder
(Li et al., 2022), SimVLM and the LLM-based models (Flamingo, BLIP-2, LLaVA) answer questions.

Training is teacher forcing on "[CLS] question answer [SEP]" (batch fields `qa_ids` / `qa_mask`, built by
the collator from the question and its answer text), image-conditioned and causal as the LM objective
(objectives/lm.py, whose `hidden` / `head_logits` / `greedy` this reuses: the same head, the language
model's own when the model has one). The loss is the cross-entropy of the answer tokens and the closing
[SEP] only (positions >= `answer_start`); the question is context, not a target. Metrics: `ppl` of the
answer tokens and `acc`, next-token accuracy on them.

Unlike the `vqa` objective there is no answer vocabulary: an answer is any token sequence, so the same
model answers open questions; the `vqa_generative` protocol (metrics/vqa_generative.py) generates greedily
after "[CLS] question" and scores the normalised text with the VQA accuracy formula, beside the
classifier head's `vqa` protocol. The captioning protocol does not use this objective (`captions=False`):
it is trained on answers, not captions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mmbench.objectives.base import ObjectiveOutput
from mmbench.objectives.lm import LM

if TYPE_CHECKING:
    from mmbench.data.batch import Batch
    from mmbench.models.model import MultimodalModel
    from mmbench.models.outputs import Features
    from mmbench.objectives.context import StepContext


class GenerativeVQA(LM):
    batch_fields = ("qa_ids", "qa_mask", "answer_start")
    captions = False

    def forward(
        self, model: MultimodalModel, batch: Batch, text: Features, image: Features, context: StepContext
    ) -> ObjectiveOutput:
        ids, attn = batch["qa_ids"], batch["qa_mask"]  # (B, T) "[CLS] question answer [SEP] [PAD]..."
        h = self.hidden(model, ids, attn, image)  # (B, T, D) causal; `text` (the caption) is unused
        target_pos = torch.arange(1, ids.shape[1], device=ids.device)  # (T-1,) position of each target
        valid = attn[:, 1:].bool() & (target_pos[None, :] >= batch["answer_start"][:, None])  # (B, T-1)
        targets = ids[:, 1:][valid]  # (N,) the answer tokens and [SEP]
        logits = self.head_logits(model, h[:, :-1][valid])  # (N, vocab)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            nll = F.cross_entropy(logits, targets) if self.label_smoothing > 0 else loss
            acc = (logits.argmax(-1) == targets).float().mean()
        return ObjectiveOutput(loss, {"ppl": nll.detach().exp(), "acc": acc})

    @torch.no_grad()
    def generate_answers(
        self,
        model,
        image,
        question_ids: torch.Tensor,
        question_mask: torch.Tensor,
        max_len: int,
        eos_id: int,
        use_cache: bool = True,
    ) -> list[torch.Tensor]:
        """Greedy answers to tokenised questions (N, T) "[CLS] question [SEP] [PAD]..." about the encoded
        images `image` (row-aligned): one id tensor per question, without the prompt, ending at `eos_id`
        or after `max_len` tokens. Questions of one prompt length decode together (a loop over the few
        distinct lengths, none over the questions)."""
        lengths = question_mask.sum(1) - 1  # (N,) the prompt: [CLS] question, without [SEP]
        out: list[torch.Tensor] = [question_ids.new_zeros(0)] * question_ids.shape[0]
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().squeeze(1)  # (n,)
            prompt = question_ids[rows, :length]  # (n, P) all real tokens
            ids = self.greedy(model, image.index(rows), max_len, -1, eos_id, use_cache, prompt=prompt)
            for i, r in enumerate(rows.tolist()):  # gather the groups back into question order (no compute)
                out[r] = ids[i]
        return out
