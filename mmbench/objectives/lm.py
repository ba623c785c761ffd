"""LM: image-conditioned causal language modeling (captioning), as BLIP's image-grounded text decoder
(Li et al., 2022), SimVLM's prefix-LM (Wang et al., 2022) and Flamingo (Alayrac et al., 2022).

Teacher forcing on "[CLS] caption [SEP]" ([CLS] begins, [SEP] ends: `generate` takes their ids as `bos_id` /
`eos_id`). The caption is re-encoded causally (`encode_text(..., causal=True)`, `fuse(..., causal_text=True)`:
the step's shared text features are bidirectional and would leak), and MLM's tied head, or the language model
part's own head, predicts token t+1 at position t. Loss: cross-entropy over the real next tokens, optional
label smoothing; metrics `ppl` and `acc`. `LM.generate` is greedy or beam search: O(L) per step over a
connector's key/value cache, else a re-run of the whole sequence (the same tokens).
The details and the reasons: docs/objectives.md (LM).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.checks import number_problem, problems_of, raise_problems
from mmbench.models.decoder import Decoder
from mmbench.models.model import MultimodalModel
from mmbench.models.outputs import Features
from mmbench.objectives.base import Objective, ObjectiveOutput
from mmbench.objectives.mlm import MLMHead

if TYPE_CHECKING:
    from mmbench.data.batch import Batch
    from mmbench.objectives.context import StepContext


class LM(Objective):
    requires: tuple[str, ...] = ("text_tokens", "causal_text")
    #: generates captions for the captioning protocol (a subclass trained on other texts sets False)
    captions = True

    @classmethod
    def setting_problems(cls, *, label_smoothing: float = 0.0, **settings) -> list[str]:
        meaning = "a probability in [0, 1) (0: plain cross-entropy)"
        smoothing = number_problem("label_smoothing", label_smoothing, meaning, low=0, high=1, high_open=True)
        return problems_of(smoothing) + super().setting_problems(**settings)

    def __init__(
        self,
        dim: int,
        vocab_size: int,
        pad_id: int,
        label_smoothing: float = 0.0,
        weight: float = 1.0,
        lm: Decoder | None = None,
    ):
        super().__init__(weight)
        raise_problems(type(self).__name__, self.setting_problems(label_smoothing=label_smoothing))
        # with a language model its own head predicts (see `head_logits`); `lm` only decides that no head is built
        self.head: nn.Module | None = MLMHead(dim, vocab_size) if lm is None else None
        self.vocab_size, self.pad_id, self.label_smoothing = vocab_size, pad_id, label_smoothing

    def hidden(self, model: MultimodalModel, ids: torch.Tensor, mask: torch.Tensor, image: Features) -> torch.Tensor:
        """Causal, image-conditioned text states (B, T, D): position t has seen tokens <= t only."""
        text = model.encode_text(ids, mask, causal=True)
        tokens = model.fuse(text, image, causal_text=True).text_tokens  # (B, T, D)
        assert tokens is not None  # `requires` text_tokens: config validation refuses fusions without them
        return tokens

    def head_logits(self, model: MultimodalModel, h: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (..., vocab) of text states h (..., D): the model's language model head if it
        has one, else this objective's `MLMHead` tied to the word embeddings."""
        decoder = getattr(model, "language_model", None)
        if decoder is not None:
            return decoder.logits(h)
        if self.head is None:
            raise ValueError(
                "this LM objective was built for a model with a language model part (lm=...), "
                "but the model it runs on has none; build it without lm"
            )
        return self.head(h, model.word_embeddings)

    def logits(self, model: MultimodalModel, ids: torch.Tensor, mask: torch.Tensor, image: Features) -> torch.Tensor:
        """Next-token logits (B, T, vocab): row t scores token t+1."""
        return self.head_logits(model, self.hidden(model, ids, mask, image))

    def forward(
        self, model: MultimodalModel, batch: Batch, text: Features, image: Features, context: StepContext
    ) -> ObjectiveOutput:
        ids, attn = batch["input_ids"], batch["attention_mask"]  # (B, T) "[CLS] caption [SEP] [PAD]..."
        h = self.hidden(model, ids, attn, image)  # (B, T, D); `text` (bidirectional) is deliberately unused
        valid = attn[:, 1:].bool()  # (B, T-1) position t predicts a real token t+1
        targets = ids[:, 1:][valid]  # (N,)
        logits = self.head_logits(model, h[:, :-1][valid])  # (N, vocab), only where needed
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            nll = F.cross_entropy(logits, targets) if self.label_smoothing > 0 else loss
            acc = (logits.argmax(-1) == targets).float().mean()
        return ObjectiveOutput(loss, {"ppl": nll.detach().exp(), "acc": acc})

    def _next_log_probs(self, model: MultimodalModel, seq: torch.Tensor, image: Features) -> torch.Tensor:
        """Log-probabilities (N, vocab) of the token after the prefix seq (N, L); no cache, full re-run."""
        h = self.hidden(model, seq, torch.ones_like(seq), image)  # (N, L, D)
        return self.head_logits(model, h[:, -1]).float().log_softmax(-1)  # (N, vocab)

    def _decoding(self, model: MultimodalModel, image: Features, use_cache: bool = True) -> _Decoding:
        cached = (
            use_cache
            and hasattr(getattr(model, "fusion", None), "start_decoding")
            and getattr(getattr(model, "text_encoder", None), "per_token", False)
        )
        return _Decoding(self, model, image, cached)

    @torch.no_grad()
    def generate(
        self,
        model: MultimodalModel,
        batch: Batch,
        max_len: int,
        num_beams: int = 1,
        *,
        bos_id: int,
        eos_id: int,
        length_penalty: float = 1.0,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Caption ids (B, <= max_len) for the images of `batch`, without the leading `bos_id`.

        Each row ends at its first `eos_id` (included) or at `max_len`, then `pad_id` follows.
        `num_beams=1` is greedy decoding; `num_beams=K>1` is beam search with length normalisation
        (see `beam_search`). `use_cache=False` re-runs the whole sequence every step even where a key/value
        cache could continue it (the reference the cached path is tested against). Call with the model in
        eval mode.
        """
        if max_len < 1 or num_beams < 1:
            raise ValueError(f"max_len and num_beams must be >= 1, got {max_len} and {num_beams}")
        image = model.encode_image(batch)  # once
        if num_beams == 1:
            return self.greedy(model, image, max_len, bos_id, eos_id, use_cache)
        return self.beam_search(model, image, max_len, num_beams, bos_id, eos_id, length_penalty, use_cache)

    @torch.no_grad()
    def greedy(
        self,
        model: MultimodalModel,
        image: Features,
        max_len: int,
        bos_id: int,
        eos_id: int,
        use_cache: bool = True,
        prompt: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Argmax decoding from already encoded images; returns (B, <= max_len), the prompt excluded.

        prompt: (B, P) ids every row starts from (all real tokens, e.g. "[CLS] question" for generative VQA);
        default: `bos_id` alone."""
        B = image.tokens.shape[0]
        if prompt is None:
            prompt = torch.full((B, 1), bos_id, dtype=torch.long, device=image.tokens.device)  # (B, 1)
        seq, start = prompt, prompt.shape[1]  # (B, P)
        done = torch.zeros(B, dtype=torch.bool, device=seq.device)
        decoding = self._decoding(model, image, use_cache)
        for _ in range(max_len):
            nxt = decoding.next_log_probs(seq).argmax(-1)  # (B,)
            nxt = nxt.masked_fill(done, self.pad_id)
            seq = torch.cat([seq, nxt[:, None]], 1)  # (B, L+1)
            done |= nxt == eos_id
            if done.all():
                break
        return seq[:, start:]

    @torch.no_grad()
    def beam_search(
        self,
        model: MultimodalModel,
        image: Features,
        max_len: int,
        num_beams: int,
        bos_id: int,
        eos_id: int,
        length_penalty: float = 1.0,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Beam search over B*K rows at once (one loop over time steps, none over the batch).

        Hypotheses are ranked by the length-normalised log-probability
            score(y) = sum_t log p(y_t | y_<t, image) / |y| ** length_penalty
        where |y| counts the generated tokens including the final [SEP]/eos. `length_penalty=1`
        (default) is the mean per-token log-probability, 0 the raw sum (which favours short
        captions). A finished beam stays in the beam as a candidate whose only continuation is
        padding at no cost, so it competes with the live beams at every step and is returned if it
        scores best at the end. Search stops when every beam of every sample has finished.
        """
        B, K = image.tokens.shape[0], num_beams
        dev = image.tokens.device
        rep = lambda x: x.repeat_interleave(K, 0)  # row b*K + k is beam k of sample b
        image = Features(rep(image.tokens), rep(image.mask), rep(image.pooled))  # (B*K, V_img, D)
        seq = torch.full((B * K, 1), bos_id, dtype=torch.long, device=dev)  # (B*K, 1)
        score = torch.full((B, K), float("-inf"), device=dev)
        score[:, 0] = 0.0  # all beams start identical: expand only the first one at step 0
        length = torch.zeros(B, K, device=dev)  # generated tokens per beam
        done = torch.zeros(B, K, dtype=torch.bool, device=dev)
        decoding = self._decoding(model, image, use_cache)
        for _ in range(max_len):
            logp = decoding.next_log_probs(seq)  # (B*K, V); V is the head's (an LM's may exceed the data's)
            V = logp.shape[-1]
            logp = logp.view(B, K, V)  # (B, K, V)
            pad_only = torch.full((V,), float("-inf"), device=dev)
            pad_only[self.pad_id] = 0.0  # the one continuation of a finished beam: padding, log-prob 0
            logp = torch.where(done[..., None], pad_only, logp)
            cand = score[..., None] + logp  # (B, K, V) total log-prob of each extension
            cand_len = (length + (~done).float())[..., None].expand(B, K, V)  # (B, K, V)
            norm = cand / cand_len.clamp_min(1.0) ** length_penalty
            top = norm.view(B, K * V).topk(K, dim=1).indices  # (B, K)
            beam, token = top // V, top % V  # source beam and new token, (B, K)
            score = cand.view(B, K * V).gather(1, top)
            length = cand_len.reshape(B, K * V).gather(1, top)
            done = done.gather(1, beam) | (token == eos_id)
            rows = (beam + torch.arange(B, device=dev)[:, None] * K).view(-1)  # (B*K,) rows of the sources
            seq = torch.cat([seq[rows], token.view(-1, 1)], 1)  # (B*K, L+1)
            decoding.select(rows)  # the cache follows its beams
            if done.all():
                break
        best = (score / length.clamp_min(1.0) ** length_penalty).argmax(1)  # (B,)
        out = seq.view(B, K, -1)[torch.arange(B, device=dev), best, 1:]  # (B, L)
        keep = int(length.gather(1, best[:, None]).max().item())
        return out[:, :keep]


class DecodingCache(Protocol):
    """What a fusion keeps of a cached run (a `DecoderCache`, or more, e.g. the visual tokens); beams
    reorder it."""

    def select(self, rows: torch.Tensor) -> None: ...


class IncrementalFusion(Protocol):
    """A fusion that can continue a cached run (fusion/prefix.py's `PrefixFusion`, fusion/gated_xattn_lm.py)."""

    def start_decoding(self, text: Features, image: Features) -> tuple[torch.Tensor, DecodingCache]: ...

    def continue_decoding(self, text: Features, cache: Any) -> torch.Tensor: ...


class _Decoding:
    """Next-token log-probabilities along a growing sequence: a cached run of the language model that each
    step continues with the newest token, or (`cached=False`) a full re-run of the sequence every step."""

    def __init__(self, objective: LM, model: MultimodalModel, image: Features, cached: bool):
        self.objective, self.model, self.image, self.cached = objective, model, image, cached
        self.fusion = cast(IncrementalFusion, getattr(model, "fusion", None))  # used only when `cached`
        self.cache: DecodingCache | None = None

    def next_log_probs(self, seq: torch.Tensor) -> torch.Tensor:
        """(N, vocab) for the token after seq (N, L); the cached path has seen seq[:, :-1] already."""
        if not self.cached:
            return self.objective._next_log_probs(self.model, seq, self.image)
        model = self.model
        if self.cache is None:  # the prefix and the whole sequence so far, once
            h, self.cache = self.fusion.start_decoding(
                model.encode_text(seq, torch.ones_like(seq), causal=True), self.image
            )
        else:  # only the newest token
            last = seq[:, -1:]  # (N, 1)
            h = self.fusion.continue_decoding(model.encode_text(last, torch.ones_like(last), causal=True), self.cache)
        return self.objective.head_logits(model, h[:, -1]).float().log_softmax(-1)  # (N, vocab)

    def select(self, rows: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.select(rows)


def decode(tokenizer, ids: torch.Tensor) -> list[str]:
    """Token ids (B, L) -> B strings, special tokens ([PAD], [SEP], ...) skipped."""
    return tokenizer.decode_batch(ids.tolist(), skip_special_tokens=True)
