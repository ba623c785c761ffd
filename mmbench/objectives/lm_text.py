"""LM on text alone: pretraining the decoder language model before any image reaches it (the pretrained,
frozen LM that BLIP-2, Flamingo and LLaVA assume, built offline from the data's own text).

The model's language model part (`model.language_model`, e.g. language_model=gpt) runs the texts by itself,
`lm.run(lm.embed(ids), mask)`: no image, no connector, no vision encoder (the step's image features are
ignored). Teacher forcing on the texts `texts` names:

    caption   "[CLS] caption [SEP]"               (input_ids / attention_mask, the LM objective's text)
    qa        "[CLS] question answer [SEP]"       (qa_ids / qa_mask, the vqa_gen objective's text)

Loss: the next-token cross-entropy over every real token after [CLS] of every text, one mean over all those
tokens (a question's tokens are targets too, and its answer's: the LM learns the answers' prior from the
questions alone). Metrics: `ppl` and `acc` over the same tokens, and with `qa`, `answer_acc`, next-token
accuracy on the answer tokens and [SEP] only, the tokens the vqa_gen objective scores, and `first_answer_acc`,
on the answer's first token alone (a one-word answer's word, [SEP] left out): the text-only (blind) floor of
generative VQA, comparable with the data's blind question prior.

`max_offset` > 0 starts the texts of a training batch at a random position in [0, max_offset] (one draw per
batch; masked padding before them, which no text token attends to), so the position embeddings after 0 learn
what a text looks like there: a connector later puts an image prefix of up to `max_offset` tokens before the
text of the frozen LM (10 tokens for LLaVA's prefix at Shapes' 48 px). Evaluation runs at offset 0.

`qa_context=True` puts something readable in that room for the question-answer texts: each "[CLS] question answer
[SEP]" is preceded by the same example's caption "[CLS] caption [SEP]" (its padding masked), so the LM learns to
read facts about the image from the positions in front of the question, as a pretrained LM has learnt to read
its context; a frozen LM trained so can be told the image by a connector's prefix in those positions. The loss
and `answer_acc` stay the blind ones in evaluation (the question alone, comparable across runs); with
`qa_context`, `context_answer_acc` and `context_first_answer_acc` score the answers after the caption: the
gain over the blind ones says how much the LM reads from its prefix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F

from mmbench.checks import number_problem, problems_of, raise_problems
from mmbench.models.decoder import Decoder
from mmbench.objectives.base import ObjectiveOutput
from mmbench.objectives.lm import LM

if TYPE_CHECKING:
    from mmbench.data.batch import Batch
    from mmbench.models.model import MultimodalModel
    from mmbench.models.outputs import Features
    from mmbench.objectives.context import StepContext

#: the texts the objective can train on -> their (ids, mask) batch fields
TEXTS = {"caption": ("input_ids", "attention_mask"), "qa": ("qa_ids", "qa_mask")}


class TextLM(LM):
    requires = ()  # no fusion capability: the fusion never runs
    captions = False  # no image is read, so it cannot caption one

    @classmethod
    def fields_read(cls, *, texts=tuple(TEXTS), **config) -> tuple[str, ...]:
        return ("qa_ids", "qa_mask", "answer_start") if "qa" in texts else ()

    @classmethod
    def setting_problems(
        cls, *, texts=tuple(TEXTS), max_offset: int = 0, qa_context: bool = False, **settings
    ) -> list[str]:
        problems = []
        unknown = [t for t in texts if t not in TEXTS]
        if unknown or not texts:
            problems.append(f"texts={list(texts)}: give a non-empty list from {list(TEXTS)}")
        if qa_context and "qa" not in texts:
            problems.append(f"qa_context=true: needs the qa texts (texts={list(texts)}), it puts a caption before them")
        offset = number_problem("max_offset", max_offset, "an integer >= 0 (0: every text at position 0)", low=0)
        return problems + problems_of(offset) + super().setting_problems(**settings)

    def __init__(
        self,
        dim: int,
        vocab_size: int,
        pad_id: int,
        lm: Decoder | None,
        texts: tuple[str, ...] | list[str] = tuple(TEXTS),
        max_offset: int = 0,
        qa_context: bool = False,
        label_smoothing: float = 0.0,
        weight: float = 1.0,
    ):
        problems = self.setting_problems(texts=texts, max_offset=max_offset, qa_context=qa_context)
        raise_problems(type(self).__name__, problems)
        if lm is None:
            raise ValueError(
                "objective lm_text trains the model's language model part and this model has none; use a model "
                "with one (e.g. model=llava, or language_model=gpt with a connector that runs it)"
            )
        super().__init__(dim, vocab_size, pad_id, label_smoothing=label_smoothing, weight=weight, lm=lm)
        self.texts, self.max_offset, self.qa_context = tuple(texts), int(max_offset), bool(qa_context)

    def draw_offset(self) -> int:
        """The first position of this batch's texts: uniform in [0, max_offset] in training, 0 in evaluation."""
        return int(torch.randint(0, self.max_offset + 1, ()).item()) if self.training and self.max_offset else 0

    def text_states(
        self,
        model: MultimodalModel,
        ids: torch.Tensor,
        mask: torch.Tensor,
        context: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The language model's states (B, T, H) of texts ids (B, T): after the `context` texts (ids, mask) (B, C)
        when given, else alone from position `offset` on (masked padding before them)."""
        lm = model.language_model
        assert lm is not None  # the constructor refused a model without one
        embeds, keys = lm.embed(ids), mask.bool()  # (B, T, H), (B, T)
        B, T, H = embeds.shape
        if context is not None:
            before, before_keys = lm.embed(context[0]), context[1].bool()  # (B, C, H), (B, C)
        else:  # the text's positions start at `offset`, its attention is unchanged
            offset = self.draw_offset()
            before, before_keys = embeds.new_zeros(B, offset, H), keys.new_zeros(B, offset)
        start = before.shape[1]
        return lm.run(torch.cat([before, embeds], 1), torch.cat([before_keys, keys], 1))[:, start:]  # (B, T, H)

    def forward(
        self, model: MultimodalModel, batch: Batch, text: Features, image: Features, context: StepContext
    ) -> ObjectiveOutput:
        # `text` and `image` (the step's shared features) are unused: the language model reads the ids alone
        logits, targets, answer, first = [], [], None, None
        fields = cast("dict[str, torch.Tensor]", batch)  # read by the names in TEXTS
        caption = (fields["input_ids"], fields["attention_mask"])  # (B, C) each: the qa texts' context
        for name in self.texts:
            ids_key, mask_key = TEXTS[name]
            ids, mask = fields[ids_key], fields[mask_key]  # (B, T) "[CLS] text [SEP] [PAD]..."
            before = caption if name == "qa" and self.qa_context and self.training else None
            h = self.text_states(model, ids, mask, before)  # (B, T, H)
            valid = mask[:, 1:].bool()  # (B, T-1) position t predicts a real token t+1
            logits.append(self.head_logits(model, h[:, :-1][valid]))  # (N, vocab)
            targets.append(ids[:, 1:][valid])  # (N,)
            if name == "qa":  # the answer tokens and [SEP], as vqa_gen scores them
                target_pos = torch.arange(1, ids.shape[1], device=ids.device)  # (T-1,)
                answer = (target_pos[None, :] >= batch["answer_start"][:, None])[valid]  # (N,) bool
                first = (target_pos[None, :] == batch["answer_start"][:, None])[valid]  # (N,) the answer's first token
        all_logits, all_targets = torch.cat(logits), torch.cat(targets)  # (N, vocab), (N,) over every text
        loss = F.cross_entropy(all_logits, all_targets, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            nll = F.cross_entropy(all_logits, all_targets) if self.label_smoothing > 0 else loss
            metrics = {"ppl": nll.detach().exp(), "acc": (all_logits.argmax(-1) == all_targets).float().mean()}
            if answer is not None:
                i = self.texts.index("qa")
                hit = logits[i].argmax(-1) == targets[i]  # (N,)
                metrics["answer_acc"] = hit[answer].float().mean()
                metrics["first_answer_acc"] = hit[first].float().mean()  # a one-word answer's word: the blind floor
                if self.qa_context and not self.training:  # the same answers read after the caption
                    ids, mask = fields["qa_ids"], fields["qa_mask"]
                    h = self.text_states(model, ids, mask, caption)[:, :-1][mask[:, 1:].bool()]  # (N, H)
                    hit = self.head_logits(model, h).argmax(-1) == targets[i]  # (N,)
                    metrics["context_answer_acc"] = hit[answer].float().mean()
                    metrics["context_first_answer_acc"] = hit[first].float().mean()
        return ObjectiveOutput(loss, metrics)
