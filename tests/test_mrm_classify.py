"""MRM (masked region / patch modeling) and Classify: masking, no leakage through the vision layers,
known-answer targets and losses, gradients, region labels, refusals (config, build, step) and real tiny runs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbench.config import ConfigError
from mmbench.models.fusion.merged import MergedFusion
from mmbench.models.layers import masked_mean
from mmbench.models.model import MultimodalModel
from mmbench.models.outputs import Features, InputMask
from mmbench.models.text import TextTransformer
from mmbench.models.vision.conv import ConvBackbone
from mmbench.models.vision.patch import PatchEncoder
from mmbench.models.vision.region import RegionEncoder, RegionFeatureEncoder
from mmbench.objectives.classify import Classify
from mmbench.objectives.context import StepContext
from mmbench.objectives.mrm import MASKABLE_OPTIONS, MRM, REGION_OPTIONS, mask_image_tokens
from mmbench.pipeline import run
from mmbench.validation import validate
from tests.conftest import compose_cfg
from tests.test_layers_and_model import D, H, inputs, tiny_model

# ---------------------------------------------------------------- masking


def test_masking_never_cls_never_padding_at_least_one_and_rate():
    g = torch.Generator().manual_seed(0)
    B, V = 2048, 65
    lengths = torch.randint(33, V + 1, (B,), generator=g)
    lengths[:4] = torch.tensor([1, 2, 3, 1])  # rows 0, 3: only the [CLS] token is real
    mask = torch.arange(V)[None, :] < lengths[:, None]  # (B, V)
    selected = mask_image_tokens(mask, prob=0.15, generator=g)
    maskable = mask.clone()
    maskable[:, 0] = False
    assert not selected[:, 0].any()  # never [CLS] / [IMG]
    assert not selected[~mask].any()  # never padding
    has = maskable.any(1)
    assert (selected.sum(1)[has] >= 1).all()  # at least one masked token per maskable sample
    assert not selected[~has].any()
    assert selected[1].sum() == 1 and selected[2].sum() >= 1  # forced picks in tiny rows
    rate = selected[4:].sum() / maskable[4:].sum()
    assert 0.14 < rate < 0.16, rate


# ---------------------------------------------------------------- MRM on patch inputs


def _step(model, B=4, T=6):
    ids, mask, batch = inputs(B=B, T=T)
    batch.update(input_ids=ids, attention_mask=mask)
    return batch, model.encode_text(ids, mask), model.encode_image(batch)


def regression_mrm(model, **kwargs) -> MRM:
    """MRM without the classification term (patch inputs have no labels), target width from the encoder."""
    return MRM(dim=D, num_region_labels=0, classification_weight=0.0, vision_input_dim=model.vision_input_dim, **kwargs)


def test_mrm_fuses_input_masked_image_with_intact_text(monkeypatch):
    model = tiny_model()
    batch, text, image = _step(model)
    mrm = regression_mrm(model)
    seen = {}
    fuse = model.fuse

    def spy(t, i, causal_text=False):
        seen["text"], seen["image"] = t, i
        return fuse(t, i, causal_text)

    monkeypatch.setattr(model, "fuse", spy)
    torch.manual_seed(7)
    mrm(model, batch, text, image, StepContext())
    torch.manual_seed(7)
    selected = mask_image_tokens(image.mask, mrm.mask_prob)
    assert seen["text"] is text  # the text is not masked
    # the fused image is a second encoding with the selected tokens hidden at the vision encoder's input
    expected = model.encode_image(batch, hide=InputMask(selected, mrm.mask_embedding))
    for field in ("tokens", "mask", "pooled"):
        torch.testing.assert_close(getattr(seen["image"], field), getattr(expected, field), atol=0, rtol=0)
    # depth 0: the visible tokens are the step's, the hidden ones differ (mask embedding + position)
    torch.testing.assert_close(seen["image"].tokens[~selected], image.tokens[~selected], atol=0, rtol=0)
    assert not torch.allclose(seen["image"].tokens[selected], image.tokens[selected])


def test_mrm_head_width_is_the_encoders_input_width():
    model = tiny_model()  # 8x8 RGB patches
    assert regression_mrm(model).regression_head.out_features == 3 * 8 * 8 == model.vision_encoder.input_dim


def test_mrm_known_answer_regression_with_zero_head():
    model = tiny_model()
    batch, text, image = _step(model)
    mrm = regression_mrm(model, mask_prob=0.5)
    torch.nn.init.zeros_(mrm.regression_head.weight)
    torch.nn.init.zeros_(mrm.regression_head.bias)
    torch.manual_seed(3)
    out = mrm(model, batch, text, image, StepContext())
    torch.manual_seed(3)
    selected = mask_image_tokens(image.mask, 0.5)
    target = image.inputs[selected]  # (N, 3*8*8) the hidden patches' pixels
    expected = target.pow(2).mean()
    assert math.isclose(out.loss.item(), expected.item(), rel_tol=1e-5)
    assert math.isclose(out.metrics["mse"].item(), expected.item(), rel_tol=1e-5)
    assert "acc" not in out.metrics  # patch inputs: no labels, regression only
    # a constant prediction c: mean((c - target)^2)
    with torch.no_grad():
        mrm.regression_head.bias.fill_(0.5)
    torch.manual_seed(3)
    out = mrm(model, batch, text, image, StepContext())
    assert math.isclose(out.loss.item(), (0.5 - target).pow(2).mean().item(), rel_tol=1e-5)


def test_mrm_regression_weight_scales_loss():
    model = tiny_model()
    batch, text, image = _step(model)
    a, b = regression_mrm(model), regression_mrm(model, regression_weight=2.0)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(0)
    la = a(model, batch, text, image, StepContext()).loss
    torch.manual_seed(0)
    lb = b(model, batch, text, image, StepContext()).loss
    assert math.isclose(lb.item(), 2 * la.item(), rel_tol=1e-6)


def test_mrm_gradients_reach_text_encoder_and_mask_embedding():
    model = tiny_model(text_depth=1).train()
    batch, text, image = _step(model)
    mrm = regression_mrm(model, mask_prob=0.3)
    out = mrm(model, batch, text, image, StepContext())
    out.loss.backward()
    assert model.text_encoder.word_embeddings.weight.grad.abs().sum() > 0  # fused image tokens see the text
    assert mrm.mask_embedding.grad.abs().sum() > 0
    assert model.vision_encoder.patch_embed.weight.grad.abs().sum() > 0  # via the unmasked context


# ---------------------------------------------------------------- MRM on region inputs

S, NUM_LABELS = 32, 5


def region_model(seed=0) -> MultimodalModel:
    torch.manual_seed(seed)
    return MultimodalModel(
        TextTransformer(vocab_size=50, dim=D, depth=0, heads=H, max_len=16, pooling=masked_mean),
        RegionEncoder(D, ConvBackbone(width=8, stages=2), image_size=S, depth=0, heads=H),
        MergedFusion(dim=D, depth=1, heads=H, prenorm=False),
        dim=D,
    ).eval()


def region_batch(B=6, R=3):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(7, 50, (B, 5), generator=g)
    labels = torch.randint(0, NUM_LABELS, (B, R), generator=g)
    labels[0, 1:] = -1  # one object only
    labels[1, 2] = -1
    xy = torch.rand(B, R, 2, generator=g) * 0.5
    boxes = torch.cat([xy, xy + 0.4], dim=-1)  # (B, R, 4)
    boxes[labels < 0] = float("nan")  # padding may hold anything
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(B, 3, S, S, generator=g),
        "region_boxes": boxes,
        "region_labels": labels,
        "region_mask": labels >= 0,
    }


def test_mrm_region_classification_known_answer_over_real_masked_regions():
    model = region_model()
    batch = region_batch()
    text = model.encode_text(batch["input_ids"], batch["attention_mask"])
    image = model.encode_image(batch)
    mrm = MRM(
        dim=D,
        num_region_labels=NUM_LABELS,
        mask_prob=0.5,
        regression_weight=0.0,
        vision_input_dim=model.vision_input_dim,
    )
    torch.nn.init.zeros_(mrm.classification_head.weight)
    bias = torch.tensor([2.0, 0.0, -1.0, 0.5, 0.0])
    with torch.no_grad():
        mrm.classification_head.bias.copy_(bias)
    torch.manual_seed(11)
    out = mrm(model, batch, text, image, StepContext())
    torch.manual_seed(11)
    selected = mask_image_tokens(image.mask, 0.5)  # (B, 1+R)
    labels = batch["region_labels"][selected[:, 1:]]  # labels of the masked regions
    assert not selected[:, 0].any() and (labels >= 0).all()  # only real regions are masked
    assert (selected.sum(1) >= 1).all()
    expected_ce = (torch.logsumexp(bias, 0) - bias[labels]).mean()
    assert math.isclose(out.loss.item(), expected_ce.item(), rel_tol=1e-5)  # regression_weight = 0
    assert math.isclose(out.metrics["acc"].item(), (labels == 0).float().mean().item(), rel_tol=1e-6)
    assert torch.isfinite(out.metrics["mse"])


def test_mrm_classification_refused_at_the_step_when_tokens_are_not_regions():
    """Config validation refuses patch tokens with classification_weight > 0 before anything is built; a
    model built by hand is refused at its first step instead of the term being dropped silently."""
    model = tiny_model()  # patch tokens: 1 + 4
    batch, text, image = _step(model, B=3)
    batch["region_labels"] = torch.tensor([[0, 1, -1], [2, -1, -1], [1, 1, 1]])
    mrm = MRM(dim=D, num_region_labels=3, vision_input_dim=model.vision_input_dim)
    with pytest.raises(ValueError, match="classification_weight=0 or use encoder/vision=region or region_feats"):
        mrm(model, batch, text, image, StepContext())
    del batch["region_labels"]
    with pytest.raises(ValueError, match="reads batch\\['region_labels'\\], which this batch lacks"):
        mrm(model, batch, text, image, StepContext())


def test_mrm_constructor_refusals():
    with pytest.raises(ValueError, match="the data has none.*classification_weight=0"):
        MRM(dim=D, num_region_labels=0, vision_input_dim=12)
    with pytest.raises(ValueError, match="vision_input_dim.*encoder/vision=patch, vit, conv, region or region_feats"):
        MRM(dim=D, num_region_labels=3)
    assert MRM(dim=D, num_region_labels=3, classification_weight=0.0, vision_input_dim=12).classification_head is None


# ---------------------------------------------------------------- no leakage, known-answer targets

FEAT = 6


def feature_model(vision_depth: int, seed=0) -> MultimodalModel:
    torch.manual_seed(seed)
    return MultimodalModel(
        TextTransformer(vocab_size=50, dim=D, depth=0, heads=H, max_len=16, pooling=masked_mean),
        RegionFeatureEncoder(D, feat_dim=FEAT, depth=vision_depth, heads=H),
        MergedFusion(dim=D, depth=1, heads=H),
        dim=D,
    ).eval()


def patch_model(vision_depth: int, seed=0) -> MultimodalModel:
    torch.manual_seed(seed)
    return MultimodalModel(
        TextTransformer(vocab_size=50, dim=D, depth=0, heads=H, max_len=16, pooling=masked_mean),
        PatchEncoder(dim=D, image_size=16, patch_size=8, depth=vision_depth, heads=H),
        MergedFusion(dim=D, depth=1, heads=H),
        dim=D,
    ).eval()


def hand_made_batch() -> dict[str, torch.Tensor]:
    """2 images; 2 and 3 objects (R = 3) with features 0.0, 0.1, 0.2, ... (padding NaN); 16x16 pixels 0.000, 0.001, ..."""
    feats = torch.arange(2 * 3 * FEAT, dtype=torch.float32).view(2, 3, FEAT) / 10  # (2, 3, FEAT)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    feats[~mask] = float("nan")
    xy = torch.tensor([[[0.1, 0.1], [0.5, 0.2], [0.0, 0.0]], [[0.2, 0.6], [0.6, 0.6], [0.1, 0.4]]])
    ids = torch.tensor([[7, 8, 9, 10], [11, 12, 13, 14]])
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16) / 1000 - 0.7,
        "region_feats": feats,
        "region_boxes": torch.cat([xy, xy + 0.3], dim=-1),  # (2, 3, 4)
        "region_mask": mask,
    }


def hidden_selection(model: MultimodalModel) -> torch.Tensor:
    """(2, V) token 1 of image 0 (region 0 / patch 0) and token 2 of image 1 (region 1 / patch 1)."""
    with torch.no_grad():
        V = model.encode_image(hand_made_batch()).tokens.shape[1]  # [IMG] + 3 regions, or [CLS] + 2x2 patches
    selected = torch.zeros(2, V, dtype=torch.bool)
    selected[0, 1] = selected[1, 2] = True
    return selected


def change_hidden_content(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same batch with new content in the hidden inputs of `hidden_selection` (nothing else changed)."""
    changed = {k: v.clone() for k, v in batch.items()}
    changed["region_feats"][0, 0] = torch.tensor([5.0, -3.0, 2.0, 0.5, -1.0, 4.0])
    changed["region_feats"][1, 1] = -changed["region_feats"][1, 1]
    changed["pixel_values"][0, :, 0:8, 0:8] = 0.9  # patch 0 of image 0
    changed["pixel_values"][1, :, 0:8, 8:16] = -0.9  # patch 1 of image 1
    return changed


def _fixed_step(model, batch):
    """The step's (text, image) features, without gradients."""
    with torch.no_grad():
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        return text, model.encode_image(batch)


def token_replacement_prediction(mrm, model, text, image, selected) -> torch.Tensor:
    """What MRM predicted before it hid inputs: the step's OUTPUT tokens replaced after the vision encoder."""
    tokens = torch.where(selected[..., None], mrm.mask_embedding, image.tokens)  # (B, V, D)
    joint = model.fuse(text, Features(tokens, image.mask, masked_mean(tokens, image.mask)))
    return mrm.regression_head(joint.image_tokens[selected])  # (N, F)


@pytest.mark.parametrize("make", [feature_model, patch_model])
def test_mrm_prediction_never_depends_on_the_hidden_input_with_vision_layers(make):
    """vision_depth 2: every vision token attends to every other. Hiding at the input, the prediction at a
    hidden position is the same whatever the hidden region / patch holds, though the answer (target) moved;
    replacing the encoder's output tokens (the former MRM) lets the visible neighbours carry the answer."""
    model = make(vision_depth=2)
    batch, changed, selected = hand_made_batch(), change_hidden_content(hand_made_batch()), hidden_selection(model)
    mrm = MRM(dim=D, num_region_labels=0, classification_weight=0.0, vision_input_dim=model.vision_input_dim)
    text, image = _fixed_step(model, batch)
    _, image_changed = _fixed_step(model, changed)
    with torch.no_grad():
        a, b = mrm.predict(model, batch, text, selected), mrm.predict(model, changed, text, selected)
        old_a = token_replacement_prediction(mrm, model, text, image, selected)
        old_b = token_replacement_prediction(mrm, model, text, image_changed, selected)
    torch.testing.assert_close(a.regression, b.regression, atol=1e-6, rtol=1e-6)  # independent of the hidden input
    torch.testing.assert_close(a.hidden, b.hidden, atol=1e-6, rtol=1e-6)
    assert (a.target - b.target).abs().amax(1).min() > 0.1  # ... while the answer changed for both hidden tokens
    assert (old_a - old_b).abs().amax(1).min() > 1e-3  # the former MRM leaked it at both hidden positions


def test_mrm_target_is_the_hidden_regions_input_feature():
    model = feature_model(vision_depth=1)
    batch, selected = hand_made_batch(), hidden_selection(model)
    mrm = MRM(dim=D, num_region_labels=0, classification_weight=0.0, vision_input_dim=model.vision_input_dim)
    assert mrm.regression_head.out_features == FEAT  # the detector-feature width, from the encoder
    text, _ = _fixed_step(model, batch)
    pred = mrm.predict(model, batch, text, selected)
    expected = torch.stack([batch["region_feats"][0, 0], batch["region_feats"][1, 1]])  # token 1 = region 0, ...
    torch.testing.assert_close(pred.target, expected, atol=0, rtol=0)  # [[0.0 .. 0.5], [2.4 .. 2.9]]
    assert not pred.target.requires_grad
    torch.nn.init.zeros_(mrm.regression_head.weight)
    torch.nn.init.zeros_(mrm.regression_head.bias)
    torch.manual_seed(0)
    image = model.encode_image(batch)
    out = mrm(model, batch, text, image, StepContext())
    torch.manual_seed(0)
    drawn = mask_image_tokens(image.mask, mrm.mask_prob)
    feats = torch.cat([torch.zeros(2, 1, FEAT), batch["region_feats"]], 1)[drawn]  # (N, FEAT)
    assert math.isclose(out.loss.item(), feats.pow(2).mean().item(), rel_tol=1e-6)  # zero head: mean square


def test_mrm_target_is_the_hidden_patchs_pixels():
    model = patch_model(vision_depth=1)
    batch, selected = hand_made_batch(), hidden_selection(model)
    mrm = MRM(dim=D, num_region_labels=0, classification_weight=0.0, vision_input_dim=model.vision_input_dim)
    text, _ = _fixed_step(model, batch)
    pred = mrm.predict(model, batch, text, selected)
    pixels = batch["pixel_values"]
    expected = torch.stack([pixels[0, :, 0:8, 0:8].flatten(), pixels[1, :, 0:8, 8:16].flatten()])  # (2, 3*8*8)
    torch.testing.assert_close(pred.target, expected, atol=0, rtol=0)


def test_mrm_target_of_end_to_end_regions_is_the_roi_feature():
    model = region_model()
    batch = region_batch()
    text, image = _fixed_step(model, batch)
    mrm = MRM(dim=D, num_region_labels=NUM_LABELS, vision_input_dim=model.vision_input_dim)
    enc = model.vision_encoder
    assert mrm.regression_head.out_features == enc.backbone.out_channels
    selected = mask_image_tokens(image.mask, 0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        roi = enc.roi_features(
            enc.backbone(batch["pixel_values"]), torch.nan_to_num(batch["region_boxes"])
        )  # (B, R, C)
        pred = mrm.predict(model, batch, text, selected)
    torch.testing.assert_close(pred.target, roi[selected[:, 1:]], atol=1e-6, rtol=1e-6)


def test_mrm_depth_0_second_encoding_is_the_steps_encoding_with_hidden_tokens_replaced():
    """Where MRM claims equality: without vision blocks the visible tokens of the hidden encoding are exactly
    the step's (so depth 0 behaves as token replacement; the hidden ones keep their position / box)."""
    for model in (feature_model(vision_depth=0), patch_model(vision_depth=0)):
        batch, selected = hand_made_batch(), hidden_selection(model)
        text, image = _fixed_step(model, batch)
        mrm = MRM(dim=D, num_region_labels=0, classification_weight=0.0, vision_input_dim=model.vision_input_dim)
        with torch.no_grad():
            masked = model.encode_image(batch, hide=InputMask(selected, mrm.mask_embedding))
        visible = ~selected & image.mask
        torch.testing.assert_close(masked.tokens[visible], image.tokens[visible], atol=0, rtol=0)
        assert (masked.tokens[selected] - image.tokens[selected]).abs().amax(1).min() > 1e-3


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize("model", ["albef", "flamingo", "clip", "concat"])
def test_mrm_refused_without_image_tokens(model):
    cfg = compose_cfg([f"model={model}", "objective=[mrm]"])
    with pytest.raises(ConfigError, match="objective 'mrm' needs a fusion with image_tokens"):
        validate(cfg)


@pytest.mark.parametrize("fusion", ["text_cross_attention", "gated_cross_attention", "none", "concat"])
def test_mrm_refused_by_fusion_override(fusion):
    cfg = compose_cfg([f"fusion={fusion}", "objective=[mrm]"])
    with pytest.raises(ConfigError, match="objective 'mrm' needs a fusion with image_tokens"):
        validate(cfg)


HF_LABELLED = [
    "data=hf",
    "data.source.path=my/data",
    "data.source.columns.label=label",
    "data.source.columns.boxes=boxes",
    "data.image_size=64",
]


@pytest.mark.parametrize(
    "model, extra",
    [("vilt", ["objective.mrm.classification_weight=0"]), ("visualbert", []), ("vilbert", []), ("lxmert", [])],
)
def test_mrm_and_classify_accepted_with_image_tokens_and_the_labels_they_read(model, extra):
    """Data with a label column (classify reads `labels`; Shapes has none) and object labels (MRM's
    classification term) is accepted from the config alone; without either column, the same run is refused
    naming the column it lacks."""
    args = [f"model={model}", "objective=[mrm,classify]", *HF_LABELLED, *extra]
    validate(compose_cfg([*args, "data.source.columns.region_labels=labels"]))  # raises if refused
    if "objective.mrm.classification_weight=0" not in extra:  # feature regression needs no object labels
        with pytest.raises(ConfigError, match="objective 'mrm' reads region_labels"):
            validate(compose_cfg(args))
    with pytest.raises(ConfigError, match="objective 'classify' reads labels"):
        validate(compose_cfg([*args, "data.source.columns.region_labels=labels", "~data.source.columns.label"]))


def test_mrm_classification_with_patch_tokens_is_refused_before_anything_is_built():
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(["model=vilt", "objective=[mrm]"]))
    message = str(err.value)
    assert "objective 'mrm' classifies the object label of masked regions" in message
    assert "'PatchEncoder' makes patch / grid tokens" in message
    assert "objective.mrm.classification_weight=0" in message and "encoder/vision=region or region_feats" in message
    validate(compose_cfg(["model=vilt", "objective=[mrm]", "objective.mrm.classification_weight=0"]))  # regression only
    validate(compose_cfg(["model=vilt", "objective=[mrm]", "encoder/vision=region"]))  # Shapes has boxes and labels


@pytest.mark.parametrize("encoder, cls", [("timm", "TimmEncoder"), ("hf", "HFVisionEncoder")])
def test_mrm_refused_with_vision_encoders_that_cannot_hide_inputs(encoder, cls):
    cfg = compose_cfg(
        [
            "model=vilt",
            "objective=[mrm]",
            "objective.mrm.classification_weight=0",
            f"encoder/vision={encoder}",
            "encoder.vision.name=some-model",
        ]
    )
    with pytest.raises(
        ConfigError,
        match=f"hides image tokens at the vision encoder's input, before any of its "
        f"layers, which encoder/vision '{cls}' cannot do; use {MASKABLE_OPTIONS}",
    ):
        validate(cfg)


def test_mrm_classification_refused_without_region_labels_in_the_data():
    base = ["model=visualbert", "objective=[mrm]", *HF_LABELLED]
    with pytest.raises(ConfigError, match="objective 'mrm' reads region_labels.*classification_weight=0"):
        validate(compose_cfg(base))
    validate(compose_cfg([*base, "objective.mrm.classification_weight=0"]))
    validate(compose_cfg([*base, "data.source.columns.region_labels=labels"]))


def test_mrm_messages_name_exactly_the_encoders_that_can():
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from tests.conftest import ROOT

    targets = {
        p.stem: get_class(OmegaConf.load(p)._target_) for p in (ROOT / "conf" / "encoder" / "vision").glob("*.yaml")
    }
    named = lambda options: set(options.removeprefix("encoder/vision=").replace(" or ", ", ").split(", "))
    assert named(MASKABLE_OPTIONS) == {n for n, c in targets.items() if getattr(c, "maskable_inputs", False)}
    assert named(REGION_OPTIONS) == {n for n, c in targets.items() if getattr(c, "needs_regions", False)}
    assert named(MASKABLE_OPTIONS) == {"patch", "vit", "conv", "region", "region_feats"}


def test_classify_refused_without_joint_pooled():
    with pytest.raises(ConfigError, match="objective 'classify' needs a fusion with joint_pooled"):
        validate(compose_cfg(["model=clip", "objective=[classify]"]))


# ---------------------------------------------------------------- Classify


def test_classify_takes_num_labels_from_the_data_unless_set():
    from hydra.utils import instantiate

    from mmbench.builder import data_kwargs
    from mmbench.data.datamodule import DataInfo

    info = DataInfo.of_vocab(10, max_text_len=8, image_size=16, num_labels=3)
    for overrides, expected in (([], 3), (["objective.classify.num_labels=5"], 5)):
        c = compose_cfg(["model=vilt", "objective=[classify]", *overrides]).objective.classify
        assert instantiate(c, **data_kwargs(c, info)).head.out_features == expected
    c = compose_cfg(["model=vilt", "objective=[classify]"]).objective.classify
    with pytest.raises(Exception, match="the data has no labels"):  # hydra wraps it in InstantiationException
        instantiate(
            c,
            **data_kwargs(
                c,
                DataInfo.of_vocab(10, max_text_len=8, image_size=16),
            ),
        )


def test_classify_known_answer():
    model = tiny_model()
    batch, text, image = _step(model, B=4)
    clf = Classify(dim=D, num_labels=3)
    torch.nn.init.zeros_(clf.head.weight)
    bias = torch.tensor([1.0, 0.0, -1.0])
    with torch.no_grad():
        clf.head.bias.copy_(bias)
    batch["labels"] = torch.tensor([0, 2, 1, -1])  # -1 is ignored
    out = clf(model, batch, text, image, StepContext())
    expected = F.cross_entropy(bias.expand(3, 3), torch.tensor([0, 2, 1]))
    assert math.isclose(out.loss.item(), expected.item(), rel_tol=1e-6)
    assert math.isclose(out.metrics["acc"].item(), 1 / 3, rel_tol=1e-6)


def test_classify_missing_label_field_names_field_and_keys():
    model = tiny_model()
    batch, text, image = _step(model)
    clf = Classify(dim=D, num_labels=2, label_field="entailment")
    with pytest.raises(KeyError) as err:
        clf(model, batch, text, image, StepContext())
    message = str(err.value)
    assert "'entailment'" in message and "input_ids" in message and "pixel_values" in message


def test_classify_label_out_of_range_is_explained():
    model = tiny_model()
    batch, text, image = _step(model, B=2)
    batch["labels"] = torch.tensor([0, 4])
    with pytest.raises(ValueError, match="num_labels=2"):
        Classify(dim=D, num_labels=2)(model, batch, text, image, StepContext())


# ---------------------------------------------------------------- real tiny run


@pytest.mark.parametrize(
    "model, extra, keys",
    [
        ("visualbert", [], ("test/mrm/acc", "test/mrm/mse", "test/mrm/loss")),  # regions, no vision layers
        ("lxmert", [], ("test/mrm/acc", "test/mrm/mse", "test/mrm/loss")),  # regions + object-relationship layers
        ("vilt", ["objective.mrm.classification_weight=0"], ("test/mrm/mse", "test/mrm/loss")),  # patches: regression
    ],
)
def test_itc_mrm_run_logs_mrm_metrics(tiny_cfg, model, extra, keys):
    small = ("trainer.limit_train_batches=2", "data.batch_size=8", "data.eval_batch_size=16", "model.backbone_width=8")
    record = run(tiny_cfg(f"model={model}", "objective=[itc,mrm]", *small, *extra))
    assert record["status"] == "completed", record.get("error")
    for key in keys:
        assert key in record["metrics"] and math.isfinite(record["metrics"][key]), key
    assert ("test/mrm/acc" in record["metrics"]) == ("test/mrm/acc" in keys)
