"""MRM: masked region / patch modeling conditioned on the text (UNITER, LXMERT).

One modality is masked at a time (UNITER's *conditional masking*): about `mask_prob` of the real
image tokens of the step are replaced by a learned mask embedding, the masked image is fused with
the UNMASKED text of the step, and the text-conditioned image tokens `joint.image_tokens` predict,
at the masked positions, the two published targets:

* MRFR, masked region feature regression (UNITER; LXMERT's "RoI-feature regression"): a Linear
  head regresses the original image token features (the step's `image.tokens`, detached so the
  target cannot move to meet the prediction) with the mean squared error over masked tokens and
  feature dimensions (UNITER uses L2 regression; MSE keeps the loss on the scale of the features).
  UNITER regresses the 2048-d detector feature; here the target is the vision encoder's output
  token (width `image_dim`), so one objective serves region, patch, grid and ViT inputs alike.
* MRC, masked region classification (UNITER's MRC with hard labels; LXMERT's detected-label
  classification): a Linear head over `num_region_labels` classes predicts the object label.
  Labels exist only for region inputs: region encoders (encoder/vision=region, region_feats)
  produce tokens [IMG, region_1..region_R] aligned with `batch["region_labels"]` (B, R) (-1 =
  padding). The term is used when `"region_labels" in batch`, `image.tokens.shape[1] == 1 + R` and
  the image mask agrees with the labels' padding (`image.mask[:, 1:] == (region_labels >= 0)`).
  Otherwise (patch / vit / conv inputs) only the regression term is computed and no `acc` is
  logged. Caveat: a patch encoder whose token count happens to equal 1 + R while every region of
  the batch is real would pass this test; on Shapes (10 patch tokens, <= 3 objects) it cannot.

Masking never selects token 0 (the [CLS] / [IMG] token every vision encoder puts first) nor
padding (`image.mask` False). As in UNITER's `_get_img_mask`, every sample that has a maskable
token gets at least one masked token (one extra token drawn at random for samples where the
Bernoulli draw selected none; vectorised, no loop over the batch). With few tokens per image
(Shapes has 1-3 objects) the effective rate is therefore higher than `mask_prob`.

The masked image features keep the mask of the step; their pooled vector is recomputed as the
masked mean of the masked tokens so that no fusion can read the hidden content through it
(the token fusions serving MRM do not use `image.pooled`).

Limitation: masking happens at the token level of the step's image features, i.e. AFTER the
vision encoder. It is exact for ViLT / VisualBERT-style inputs (vision_depth 0: a token is a
function of its own patch / region only). With unimodal vision layers (vision_depth > 0, e.g.
LXMERT, ViLBERT) the unmasked neighbours have already attended to the masked token, so they may
carry its content; UNITER / LXMERT mask the input features before the encoder instead. Keeping
one image encoding per step (shared by all objectives) is the trade-off taken here.

Metrics: `mse` (the regression loss) and `acc` (label accuracy over the masked real regions, when
labels are used). loss = regression_weight * mrfr + classification_weight * mrc.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.models.layers import masked_mean
from mmbench.models.outputs import Features
from mmbench.objectives.base import Objective, ObjectiveOutput


def mask_image_tokens(
    mask: torch.Tensor, prob: float = 0.15, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Choose the image tokens to mask.

    mask (B, V) bool, True = real token. Token 0 ([CLS]/[IMG]) and padding are never chosen; each
    row with at least one maskable token gets at least one chosen token.
    Returns selected (B, V) bool.
    """
    B, V = mask.shape
    maskable = mask.bool().clone()
    maskable[:, 0] = False  # (B, V) never the [CLS] / [IMG] token
    scores = torch.rand(B, V, generator=generator, device=mask.device)  # (B, V)
    selected = maskable & (scores < prob)
    # rows without any selected token: force one maskable token, picked at random (UNITER)
    empty = ~selected.any(1) & maskable.any(1)  # (B,)
    pick = scores.masked_fill(~maskable, -1.0).argmax(1)  # (B,) random maskable position
    forced = F.one_hot(pick, V).bool() & empty[:, None]  # (B, V)
    return selected | forced


class MRM(Objective):
    requires = ("image_tokens",)

    def __init__(
        self,
        dim: int,
        num_region_labels: int,
        mask_prob: float = 0.15,
        regression_weight: float = 1.0,
        classification_weight: float = 1.0,
        image_dim: int | None = None,
        weight: float = 1.0,
    ):
        """dim: width of the fused image tokens; image_dim: width of the vision encoder's tokens
        (the mask embedding and the regression target; defaults to dim). num_region_labels <= 0
        (data without object labels) builds no classification head."""
        super().__init__(weight)
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
        image_dim = image_dim or dim
        self.mask_embedding = nn.Parameter(torch.zeros(image_dim))  # (Dv,) replaces a masked token
        nn.init.trunc_normal_(self.mask_embedding, std=0.02)
        self.regression_head = nn.Linear(dim, image_dim)
        self.num_region_labels = int(num_region_labels)
        self.classification_head = nn.Linear(dim, num_region_labels) if num_region_labels > 0 else None
        self.mask_prob = mask_prob
        self.regression_weight = float(regression_weight)
        self.classification_weight = float(classification_weight)

    def region_labels(self, batch: dict[str, torch.Tensor], image: Features) -> torch.Tensor | None:
        """(B, V) labels aligned with the image tokens (-1 where none), or None when the image
        tokens are not [IMG, region_1..region_R] tokens of the batch's objects."""
        if self.classification_head is None or "region_labels" not in batch:
            return None
        labels = batch["region_labels"]  # (B, R)
        B, V = image.mask.shape
        if V != 1 + labels.shape[1] or not torch.equal(image.mask[:, 1:].bool(), labels >= 0):
            return None
        return torch.cat([labels.new_full((B, 1), -1), labels], dim=1)  # (B, 1+R) no label for [IMG]

    def forward(self, model, batch, text, image, context) -> ObjectiveOutput:
        selected = mask_image_tokens(image.mask, self.mask_prob)  # (B, V)
        tokens = torch.where(selected[..., None], self.mask_embedding.to(image.tokens.dtype), image.tokens)  # (B, V, Dv)
        masked = Features(tokens, image.mask, masked_mean(tokens, image.mask))
        joint = model.fuse(text, masked)  # the text stays intact
        hidden = joint.image_tokens[selected]  # (N, D) fused tokens at the masked positions
        target = image.tokens.detach()[selected]  # (N, Dv)

        if hidden.shape[0] == 0:  # no maskable token in the whole batch: zero loss that keeps the graph
            zero = joint.image_tokens.sum() * 0.0
            return ObjectiveOutput(zero, {"mse": zero.detach()})
        mrfr = F.mse_loss(self.regression_head(hidden), target)
        loss = self.regression_weight * mrfr
        metrics = {"mse": mrfr.detach()}

        labels = self.region_labels(batch, image)  # (B, V) or None
        if labels is not None:
            labels = labels[selected]  # (N,)
            real = labels >= 0
            logits = self.classification_head(hidden[real])  # (M, L)
            if real.any():
                mrc = F.cross_entropy(logits, labels[real])
                acc = (logits.argmax(-1) == labels[real]).float().mean()
            else:
                mrc = logits.sum() * 0.0
                acc = mrc.detach()
            loss = loss + self.classification_weight * mrc
            metrics.update(mrc=mrc.detach(), acc=acc)
        return ObjectiveOutput(loss, metrics)
