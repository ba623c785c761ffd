"""MRM (masked region / patch modeling) and Classify: masking, known-answer losses, gradients,
region labels, config validation and a real tiny run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbench.config import ConfigError, validate
from mmbench.objectives.context import StepContext
from mmbench.models.fusion.merged import MergedFusion
from mmbench.models.layers import masked_mean
from mmbench.models.model import MultimodalModel
from mmbench.models.text import TextTransformer
from mmbench.models.vision.conv import ConvBackbone
from mmbench.models.vision.region import RegionEncoder
from mmbench.objectives.classify import Classify
from mmbench.objectives.mrm import MRM, mask_image_tokens
from mmbench.pipeline import run
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


def test_mrm_fuses_masked_image_with_intact_text(monkeypatch):
    model = tiny_model()
    batch, text, image = _step(model)
    mrm = MRM(dim=D, num_region_labels=0)
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
    fused_in = seen["image"].tokens
    assert torch.equal(fused_in[selected], mrm.mask_embedding.expand(int(selected.sum()), D))
    assert torch.equal(fused_in[~selected], image.tokens[~selected])


def test_mrm_known_answer_regression_with_zero_head():
    model = tiny_model()
    batch, text, image = _step(model)
    mrm = MRM(dim=D, num_region_labels=0, mask_prob=0.5)
    torch.nn.init.zeros_(mrm.regression_head.weight)
    torch.nn.init.zeros_(mrm.regression_head.bias)
    torch.manual_seed(3)
    out = mrm(model, batch, text, image, StepContext())
    torch.manual_seed(3)
    selected = mask_image_tokens(image.mask, 0.5)
    target = image.tokens.detach()[selected]  # (N, D)
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
    a, b = MRM(dim=D, num_region_labels=0), MRM(dim=D, num_region_labels=0, regression_weight=2.0)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(0)
    la = a(model, batch, text, image, StepContext()).loss
    torch.manual_seed(0)
    lb = b(model, batch, text, image, StepContext()).loss
    assert math.isclose(lb.item(), 2 * la.item(), rel_tol=1e-6)


def test_mrm_gradients_reach_text_encoder_and_mask_embedding():
    model = tiny_model(text_depth=1).train()
    batch, text, image = _step(model)
    mrm = MRM(dim=D, num_region_labels=0, mask_prob=0.3)
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
    mrm = MRM(dim=D, num_region_labels=NUM_LABELS, mask_prob=0.5, regression_weight=0.0)
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


def test_mrm_labels_ignored_when_tokens_are_not_regions():
    model = tiny_model()  # patch tokens: 1 + 4
    batch, text, image = _step(model, B=3)
    batch["region_labels"] = torch.tensor([[0, 1, -1], [2, -1, -1], [1, 1, 1]])
    out = MRM(dim=D, num_region_labels=3)(model, batch, text, image, StepContext())
    assert "acc" not in out.metrics and torch.isfinite(out.loss)


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


@pytest.mark.parametrize("model", ["vilt", "visualbert", "vilbert", "lxmert"])
def test_mrm_and_classify_accepted_with_image_tokens(model):
    # data with a label column (classify reads `labels`; Shapes has none): only the config is checked here
    validate(compose_cfg([f"model={model}", "objective=[mrm,classify]", "data=hf", "data.source.path=my/data",
                          "data.source.columns.label=label", "data.source.columns.boxes=boxes",
                          "data.image_size=64"]))


def test_classify_refused_without_joint_pooled():
    with pytest.raises(ConfigError, match="objective 'classify' needs a fusion with joint_pooled"):
        validate(compose_cfg(["model=clip", "objective=[classify]"]))


# ---------------------------------------------------------------- Classify


def test_classify_takes_num_labels_from_the_data_unless_set():
    from hydra.utils import instantiate

    from mmbench.builder import data_kwargs
    from mmbench.data.datamodule import DataInfo

    info = DataInfo(vocab_size=10, pad_id=0, mask_id=4, bos_id=5, eos_id=6, special_ids=list(range(7)),
                    max_text_len=8, image_size=16, num_labels=3)
    for overrides, expected in (([], 3), (["objective.classify.num_labels=5"], 5)):
        c = compose_cfg(["model=vilt", "objective=[classify]", *overrides]).objective.classify
        assert instantiate(c, **data_kwargs(c, info)).head.out_features == expected
    c = compose_cfg(["model=vilt", "objective=[classify]"]).objective.classify
    with pytest.raises(Exception, match="the data has no labels"):  # hydra wraps it in InstantiationException
        instantiate(c, **data_kwargs(c, DataInfo(vocab_size=10, pad_id=0, mask_id=4, bos_id=5, eos_id=6,
                                                 special_ids=list(range(7)), max_text_len=8, image_size=16)))


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


def test_visualbert_itc_mrm_run_logs_mrm_metrics(tiny_cfg):
    small = ("trainer.limit_train_batches=2", "data.batch_size=8", "data.eval_batch_size=16", "model.backbone_width=8")
    record = run(tiny_cfg("model=visualbert", "objective=[itc,mrm]", *small))
    assert record["status"] == "completed"
    for key in ("test/mrm/acc", "test/mrm/mse", "test/mrm/loss"):
        assert key in record["metrics"] and math.isfinite(record["metrics"][key]), key
