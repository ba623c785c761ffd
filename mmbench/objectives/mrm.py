"""MRM: masked region / patch modeling conditioned on the text (UNITER, LXMERT).

UNITER's conditional masking: about `mask_prob` of the step's real image tokens (never token 0 nor padding;
at least one in every sample that has one) are hidden at the vision encoder's INPUT, in a second encoding
`model.encode_image(batch, hide=InputMask(selected, mask_embedding))`, so no vision block sees them. The masked
image is fused with the unmasked text, and `joint.image_tokens` at the hidden positions predict

* MRFR: the hidden token's input feature (`Features.inputs`, detached), by mean squared error;
* MRC: the object label (`batch["region_labels"]`), by cross-entropy; region tokens only (config validation
  refuses `classification_weight > 0` with patch / grid tokens; with weight 0 no head is built).

loss = regression_weight * mrfr + classification_weight * mrc; metrics `mse`, and with MRC `mrc` and `acc`.
Vision encoders that can hide inputs declare `maskable_inputs` (patch, vit, conv, region, region_feats).
Why masking at the input, and what the target is for each vision input: docs/objectives.md (MRM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.checks import number_problem, problems_of, raise_problems
from mmbench.models.outputs import Features, InputMask
from mmbench.objectives.base import Objective, ObjectiveOutput

if TYPE_CHECKING:
    from mmbench.data.batch import Batch
    from mmbench.models.model import MultimodalModel
    from mmbench.objectives.context import StepContext

#: the encoder/vision options whose encoders declare `maskable_inputs` / make region tokens (for messages)
MASKABLE_OPTIONS = "encoder/vision=patch, vit, conv, region or region_feats"
REGION_OPTIONS = "encoder/vision=region or region_feats"


def mask_image_tokens(mask: torch.Tensor, prob: float = 0.15, generator: torch.Generator | None = None) -> torch.Tensor:
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


@dataclass
class MaskedPrediction:
    """What MRM predicts at the N hidden image tokens of a step."""

    hidden: torch.Tensor  # (N, D) fused image tokens at the hidden positions
    regression: torch.Tensor  # (N, F) predicted input features
    target: torch.Tensor  # (N, F) the hidden tokens' input features (detached)


class MRM(Objective):
    requires = ("image_tokens",)

    @classmethod
    def fields_read(cls, classification_weight: float = 1.0, **config) -> tuple[str, ...]:
        return ("region_labels",) if float(classification_weight) > 0 else ()

    @classmethod
    def vision_problems(
        cls, name: str, vision_encoder: type, classification_weight: float = 1.0, **config
    ) -> list[str]:
        encoder = vision_encoder.__name__
        problems = []
        if not getattr(vision_encoder, "maskable_inputs", False):
            problems.append(
                f"objective '{name}' hides image tokens at the vision encoder's input, before any of its layers, "
                f"which encoder/vision '{encoder}' cannot do; use {MASKABLE_OPTIONS}, or drop '{name}'"
            )
        if float(classification_weight) > 0 and not getattr(vision_encoder, "needs_regions", False):
            problems.append(
                f"objective '{name}' classifies the object label of masked regions (classification_weight="
                f"{classification_weight}), but encoder/vision '{encoder}' makes patch / grid tokens, which have no "
                f"labels; set objective.{name}.classification_weight=0 (feature regression only) or use {REGION_OPTIONS}"
            )
        return problems

    @classmethod
    def setting_problems(
        cls, *, mask_prob: float = 0.15, regression_weight: float = 1.0, classification_weight: float = 1.0, **settings
    ) -> list[str]:
        problems = problems_of(
            number_problem(
                "mask_prob", mask_prob, "a fraction of image tokens in (0, 1], e.g. 0.15", low=0, high=1, low_open=True
            ),
            number_problem("regression_weight", regression_weight, "a loss weight >= 0", low=0),
            number_problem(
                "classification_weight", classification_weight, "a loss weight >= 0 (0: regression only)", low=0
            ),
        )
        return problems + super().setting_problems(**settings)

    def __init__(
        self,
        dim: int,
        num_region_labels: int,
        mask_prob: float = 0.15,
        regression_weight: float = 1.0,
        classification_weight: float = 1.0,
        image_dim: int | None = None,
        vision_input_dim: int | None = None,
        weight: float = 1.0,
    ):
        """dim: width of the fused image tokens; image_dim: width of the vision encoder's tokens (the mask
        embedding; defaults to dim); vision_input_dim: width of the vision encoder's input features
        (`Features.inputs`, the regression target; the builder takes it from the built encoder)."""
        super().__init__(weight)
        weights = {"regression_weight": regression_weight, "classification_weight": classification_weight}
        raise_problems("MRM", self.setting_problems(mask_prob=mask_prob, **weights))
        if vision_input_dim is None:
            raise ValueError(
                "MRM regresses the vision encoder's input features and needs their width, vision_input_dim (the "
                f"builder reads it from the encoder's `input_dim`); this vision encoder has none: use {MASKABLE_OPTIONS}"
            )
        if classification_weight > 0 and num_region_labels <= 0:
            raise ValueError(
                f"MRM's classification term (classification_weight={classification_weight}) predicts object labels, "
                f"but the data has none (num_region_labels={num_region_labels}); set objective.mrm.classification_weight=0 "
                f"for feature regression only, or use data with region labels (data.source.columns.region_labels)"
            )
        self.mask_embedding = nn.Parameter(torch.zeros(image_dim or dim))  # (Dv,) replaces a hidden token's content
        nn.init.trunc_normal_(self.mask_embedding, std=0.02)
        self.regression_head = nn.Linear(dim, vision_input_dim)
        self.num_region_labels = int(num_region_labels)
        self.classification_head = nn.Linear(dim, num_region_labels) if classification_weight > 0 else None
        self.mask_prob = mask_prob
        self.regression_weight = float(regression_weight)
        self.classification_weight = float(classification_weight)

    def predict(self, model, batch: Batch, text: Features, selected: torch.Tensor) -> MaskedPrediction:
        """Encode the image again with the `selected` (B, V) tokens hidden at the vision encoder's input,
        fuse it with the intact text, and predict the hidden tokens' input features."""
        masked = model.encode_image(batch, hide=InputMask(selected, self.mask_embedding))  # second encoding
        if masked.inputs is None:
            raise ValueError(
                f"vision encoder {type(model.vision_encoder).__name__} hid the tokens but returned no "
                f"Features.inputs, the input features MRM regresses"
            )
        joint = model.fuse(text, masked)  # the text stays intact
        hidden = joint.image_tokens[selected]  # (N, D) fused tokens at the hidden positions
        target = masked.inputs.detach()[selected]  # (N, F)
        return MaskedPrediction(hidden, self.regression_head(hidden), target)

    def token_labels(self, batch: Batch, image: Features) -> torch.Tensor:
        """(B, V) object label of each image token, -1 for the leading [IMG] token(s) and padding.

        Region encoders make V = E + R tokens [E learned tokens; region_1..region_R] in the order of
        `batch["region_labels"]` (B, R); anything else is refused (config validation refuses it first)."""
        if "region_labels" not in batch:
            raise ValueError(
                f"MRM's classification term reads batch['region_labels'], which this batch lacks (it has "
                f"{', '.join(sorted(batch))}); set objective.mrm.classification_weight=0 or use data with labels"
            )
        labels = batch["region_labels"]  # (B, R)
        B, V = image.mask.shape
        E = V - labels.shape[1]
        if E < 0 or not torch.equal(image.mask[:, E:].bool(), labels >= 0):
            raise ValueError(
                f"MRM's classification term needs image tokens aligned with batch['region_labels'] {tuple(labels.shape)}, "
                f"but the vision encoder made {V} tokens per image whose mask does not match the labels' padding (patch "
                f"or grid tokens have no object labels); set objective.mrm.classification_weight=0 or use {REGION_OPTIONS}"
            )
        return torch.cat([labels.new_full((B, E), -1), labels], dim=1)  # (B, V)

    def forward(
        self, model: MultimodalModel, batch: Batch, text: Features, image: Features, context: StepContext
    ) -> ObjectiveOutput:
        selected = mask_image_tokens(image.mask, self.mask_prob)  # (B, V)
        pred = self.predict(model, batch, text, selected)
        if pred.hidden.shape[0] == 0:  # no maskable token in the whole batch: zero loss that keeps the graph
            zero = pred.regression.sum() * 0.0
            return ObjectiveOutput(zero, {"mse": zero.detach()})
        mrfr = F.mse_loss(pred.regression, pred.target)
        loss = self.regression_weight * mrfr
        metrics = {"mse": mrfr.detach()}

        if self.classification_head is not None:
            labels = self.token_labels(batch, image)[selected]  # (N,)
            real = labels >= 0
            logits = self.classification_head(pred.hidden[real])  # (M, L)
            if real.any():
                mrc = F.cross_entropy(logits, labels[real])
                acc = (logits.argmax(-1) == labels[real]).float().mean()
            else:
                mrc = logits.sum() * 0.0
                acc = mrc.detach()
            loss = loss + self.classification_weight * mrc
            metrics.update(mrc=mrc.detach(), acc=acc)
        return ObjectiveOutput(loss, metrics)
