"""Vision input encoders: conv grid (hybrid ViT), end-to-end regions, precomputed regions, ViT."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchvision.ops import roi_align

from mmbench.models.outputs import InputMask
from mmbench.models.vision.conv import ConvBackbone, ConvEncoder, StridedPointwiseConv
from mmbench.models.vision.patch import PatchEncoder
from mmbench.models.vision.region import BoxEmbedding, RegionEncoder, RegionFeatureEncoder

B, S, D, H, F = 3, 32, 32, 4, 24
VISION_CONF = Path(__file__).resolve().parent.parent / "conf" / "encoder" / "vision"


def conv_encoder(depth=2, seed=0) -> ConvEncoder:
    torch.manual_seed(seed)
    return ConvEncoder(D, ConvBackbone(width=8, stages=3), image_size=S, depth=depth, heads=H).eval()


def region_encoder(depth=2, seed=0) -> RegionEncoder:
    torch.manual_seed(seed)
    return RegionEncoder(D, ConvBackbone(width=8, stages=2), image_size=S, depth=depth, heads=H).eval()


def feature_encoder(depth=2, seed=0) -> RegionFeatureEncoder:
    torch.manual_seed(seed)
    return RegionFeatureEncoder(D, feat_dim=F, depth=depth, heads=H).eval()


def random_boxes(shape, g) -> torch.Tensor:
    """Valid normalised boxes (..., 4) with x0 < x1, y0 < y1."""
    a, b = torch.rand(*shape, 2, generator=g), torch.rand(*shape, 2, generator=g)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b) + 0.05
    return torch.cat([lo, hi.clamp(max=1.0)], dim=-1)


def region_batch(seed=1) -> dict[str, torch.Tensor]:
    """3 images with 3, 1 and 0 objects (R = 3)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    return {
        "pixel_values": torch.rand(B, 3, S, S, generator=g) * 2 - 1,
        "region_boxes": random_boxes((B, 3), g) * mask[..., None],
        "region_mask": mask,
        "region_feats": torch.randn(B, 3, F, generator=g) * mask[..., None],
    }


def pad_regions(batch, extra: int, seed: int, fill_feats=None) -> dict[str, torch.Tensor]:
    """Overwrite padded slots with garbage and append `extra` more padded slots."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.cat([batch["region_mask"], torch.zeros(B, extra, dtype=torch.bool)], 1)
    R = mask.shape[1]
    boxes = torch.cat([batch["region_boxes"], torch.zeros(B, extra, 4)], 1)
    feats = torch.cat([batch["region_feats"], torch.zeros(B, extra, F)], 1)
    garbage_feats = torch.randn(B, R, F, generator=g) * 100 if fill_feats is None else torch.full((B, R, F), fill_feats)
    return {
        "pixel_values": batch["pixel_values"],
        "region_mask": mask,
        "region_boxes": torch.where(mask[..., None], boxes, random_boxes((B, R), g)),
        "region_feats": torch.where(mask[..., None], feats, garbage_feats),
    }


# ---------------------------------------------------------------- shapes and masks


def test_conv_backbone_shape():
    backbone = ConvBackbone(width=8, stages=3)
    out = backbone(torch.randn(2, 3, S, S))
    assert backbone.stride == 8 and backbone.out_channels == 32
    assert out.shape == (2, 32, S // 8, S // 8)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [48, 47])
def test_strided_pointwise_conv_equals_strided_conv2d(channels_last, size):
    """Same output and same gradients (input and weight) as nn.Conv2d(1x1, stride 2) with the same
    weights. The reference runs with oneDNN off: its strided 1x1 weight gradient is the kernel that
    corrupts the heap on AVX-512 CPUs (docs/reliability.md)."""
    torch.manual_seed(0)
    ours = StridedPointwiseConv(8, 12, stride=2, bias=True)
    ref = torch.nn.Conv2d(8, 12, kernel_size=1, stride=2, bias=True)
    ref.load_state_dict(ours.state_dict())  # same parameter names and shapes: checkpoints interchange
    x = torch.randn(4, size, size, 8).permute(0, 3, 1, 2)  # channels-last strides, as the collator's pixels
    x = x if channels_last else x.contiguous()
    g = torch.randn(4, 12, (size + 1) // 2, (size + 1) // 2)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    ours(xs[0]).backward(g)
    with torch.backends.mkldnn.flags(enabled=False):
        ref(xs[1]).backward(g)
        expected = ref(x)
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, atol=1e-4, rtol=1e-4)


def test_conv_backbone_trains_on_channels_last_pixels_with_few_channels():
    """Regression: a narrow ConvBackbone (width 8: the shortcut is a strided 1x1 conv with 8 input
    channels) trained on the collator's channels-last-strided pixels crashed the process on AVX-512
    CPUs ("double free or corruption", exit 134/139) in oneDNN's strided 1x1 weight gradient. Run in a
    child process so a crash fails this test instead of killing the suite. On a CPU without AVX-512
    the old code passed too; the equivalence test above covers the replacement there."""
    code = textwrap.dedent(
        """
        import torch
        from mmbench.models.vision.conv import ConvBackbone
        torch.manual_seed(0)
        pixels = torch.randint(0, 256, (64, 48, 48, 3), dtype=torch.uint8)  # (B, H, W, 3), as stored
        pixels = pixels.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # the collator's (B, 3, H, W) view
        assert pixels.is_contiguous(memory_format=torch.channels_last)
        backbone = ConvBackbone(width=8, stages=3)
        for _ in range(3):
            backbone(pixels).square().mean().backward()
        assert all(p.grad is not None and p.grad.isfinite().all() for p in backbone.parameters())
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", f"exit {done.returncode}: {done.stderr[-2000:]}"


def test_conv_encoder_shapes():
    enc = conv_encoder()
    with torch.no_grad():
        out = enc({"pixel_values": torch.randn(B, 3, S, S)})
    V = 1 + (S // 8) ** 2  # [CLS] + 4x4 grid
    assert out.tokens.shape == (B, V, D) and out.pooled.shape == (B, D)
    assert out.mask.shape == (B, V) and out.mask.dtype == torch.bool and out.mask.all()


def test_conv_encoder_wrong_image_size_is_explained():
    with pytest.raises(ValueError, match="image_size"):
        conv_encoder()({"pixel_values": torch.randn(1, 3, 2 * S, 2 * S)})
    with pytest.raises(ValueError, match="not divisible"):
        ConvEncoder(D, ConvBackbone(width=8, stages=3), image_size=36)


@pytest.mark.parametrize("make", [region_encoder, feature_encoder])
def test_region_encoder_shapes_and_mask(make):
    batch = region_batch()
    with torch.no_grad():
        out = make()(batch)
    assert out.tokens.shape == (B, 4, D) and out.pooled.shape == (B, D)
    assert out.mask.dtype == torch.bool
    assert out.mask[:, 0].all()  # [IMG] token is always valid
    assert torch.equal(out.mask[:, 1:], batch["region_mask"])


def test_vit_is_patch_encoder_with_depth():
    enc = PatchEncoder(D, image_size=S, patch_size=8, depth=2, heads=H)
    out = enc({"pixel_values": torch.randn(B, 3, S, S)})
    assert out.tokens.shape == (B, 17, D) and out.mask.all()


def test_box_embedding_geometry():
    g = BoxEmbedding.geometry(torch.tensor([[0.1, 0.2, 0.5, 0.6]]))
    torch.testing.assert_close(g, torch.tensor([[0.1, 0.2, 0.5, 0.6, 0.4, 0.4, 0.16]]))


# ---------------------------------------------------------------- padding invariance


def _assert_real_outputs_equal(a, b, mask):
    """Same pooled vectors and the same tokens wherever `mask` (B, 1+R) is True."""
    torch.testing.assert_close(a.pooled, b.pooled, atol=1e-5, rtol=1e-5)
    R1 = mask.shape[1]
    ta, tb = a.tokens[:, :R1], b.tokens[:, :R1]
    torch.testing.assert_close(ta[mask], tb[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [region_encoder, feature_encoder])
def test_padded_regions_never_change_outputs(make):
    enc = make(depth=2)
    batch = region_batch()
    with torch.no_grad():
        a = enc(batch)
        for seed, extra in [(2, 0), (3, 2), (4, 5)]:
            b = enc(pad_regions(batch, extra, seed))
            assert b.tokens.shape[1] == 4 + extra
            _assert_real_outputs_equal(a, b, a.mask)


def test_nan_in_padded_region_features_never_leaks():
    enc = feature_encoder(depth=2)
    batch = region_batch()
    with torch.no_grad():
        a = enc(batch)
        b = enc(pad_regions(batch, 2, seed=5, fill_feats=float("nan")))
    assert torch.isfinite(b.tokens).all() and torch.isfinite(b.pooled).all()
    _assert_real_outputs_equal(a, b, a.mask)


@pytest.mark.parametrize("make", [region_encoder, feature_encoder])
def test_moving_a_real_box_changes_outputs(make):
    """Counterpart of the padding test: real regions are not ignored by accident."""
    enc = make(depth=2)
    batch = region_batch()
    moved = dict(batch, region_boxes=batch["region_boxes"].clone())
    moved["region_boxes"][0, 1] = torch.tensor([0.0, 0.0, 0.3, 0.3])
    with torch.no_grad():
        a, b = enc(batch), enc(moved)
    assert not torch.allclose(a.pooled[0], b.pooled[0], atol=1e-4)
    assert not torch.allclose(a.tokens[0, 2], b.tokens[0, 2], atol=1e-4)
    # the other images are untouched (no batch coupling)
    torch.testing.assert_close(a.pooled[1:], b.pooled[1:])


@pytest.mark.parametrize("make", [region_encoder, feature_encoder])
def test_image_without_objects_is_finite(make):
    enc = make(depth=2)
    batch = region_batch()  # image 2 has no objects
    out = enc(batch)
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()
    assert out.mask[2].tolist() == [True, False, False, False]
    empty = {k: v[2:] for k, v in batch.items()}
    with torch.no_grad():
        alone = enc.eval()(empty)
    torch.testing.assert_close(out.pooled[2:], alone.pooled, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- RoI features


def test_roi_features_see_image_content():
    """Left half red, right half blue: a box on each half gives different RoI features."""
    enc = region_encoder()
    pixels = -torch.ones(1, 3, S, S)
    pixels[:, 0, :, : S // 2] = 1.0  # red left half
    pixels[:, 2, :, S // 2 :] = 1.0  # blue right half
    boxes = torch.tensor([[[0.05, 0.3, 0.4, 0.7], [0.6, 0.3, 0.95, 0.7]]])
    with torch.no_grad():
        feats = enc.roi_features(enc.backbone(pixels), boxes)  # (1, 2, C)
    assert feats.shape == (1, 2, enc.backbone.out_channels)
    assert (feats[0, 0] - feats[0, 1]).abs().max() > 1e-2


def test_batched_roi_align_equals_per_image_calls():
    enc = region_encoder()
    batch = region_batch()
    boxes = random_boxes((B, 5), torch.Generator().manual_seed(7))
    with torch.no_grad():
        fmap = enc.backbone(batch["pixel_values"])
        batched = enc.roi_features(fmap, boxes)  # (B, 5, C)
        for b in range(B):  # the reference: one roi_align call per image, boxes as a list
            ref = roi_align(
                fmap[b : b + 1],
                [boxes[b] * S],
                output_size=4,
                spatial_scale=1 / enc.backbone.stride,
                sampling_ratio=2,
                aligned=True,
            ).mean(dim=(2, 3))
            torch.testing.assert_close(batched[b], ref)


def test_gradients_reach_backbone_through_roi_align():
    enc = region_encoder().train()
    enc(region_batch()).pooled.pow(2).sum().backward()
    for name, p in enc.backbone.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- conv batch independence


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_conv_encoder_rows_are_independent(mode):
    """GroupNorm: a sample's features never depend on the rest of the batch (train mode too)."""
    enc = conv_encoder().train(mode == "train")
    pixels = torch.randn(B, 3, S, S)
    with torch.no_grad():
        together = enc({"pixel_values": pixels})
        for i in range(B):
            alone = enc({"pixel_values": pixels[i : i + 1]})
            torch.testing.assert_close(together.tokens[i : i + 1], alone.tokens, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(together.pooled[i : i + 1], alone.pooled, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- configs


def _root(vision_yaml: str):
    """The encoder config under a root that provides what it interpolates."""
    return OmegaConf.create(
        {
            "model": {
                "vision_dim": D,
                "vision_depth": 1,
                "vision_heads": H,
                "backbone_width": 8,
                "mlp_ratio": 4.0,
                "prenorm": True,
                "dropout": 0.0,
                "patch_size": 8,
                "region_feat_dim": F,
            },
            "data": {"image_size": S},
            "vision": OmegaConf.load(VISION_CONF / f"{vision_yaml}.yaml"),
        }
    )


@pytest.mark.parametrize(
    "name, cls",
    [("conv", ConvEncoder), ("region", RegionEncoder), ("region_feats", RegionFeatureEncoder), ("vit", PatchEncoder)],
)
def test_config_instantiates_and_runs(name, cls):
    enc = instantiate(_root(name).vision).eval()
    assert type(enc) is cls
    with torch.no_grad():
        out = enc(region_batch())
    assert out.tokens.shape[0] == B and out.pooled.shape == (B, D)
    assert out.mask.shape == out.tokens.shape[:2]


@pytest.mark.parametrize("name", ["conv", "region", "region_feats", "vit"])
def test_config_composes_with_train_yaml(name):
    """The group option composes with the real conf/train.yaml (default vilt sizes)."""
    from conftest import compose_cfg

    extra = ["model.region_feat_dim=16"] if name == "region_feats" else []
    cfg = compose_cfg([f"encoder/vision={name}", *extra])
    enc = instantiate(cfg.encoder.vision)
    assert enc.needs_regions if name.startswith("region") else not getattr(enc, "needs_regions", False)


# ---------------------------------------------------------------- hiding input tokens (MRM)

MASKABLE = ["vit", "conv", "region", "region_feats"]


def _encoder(name: str, depth: int, seed: int = 0):
    torch.manual_seed(seed)
    root = _root(name)
    root.model.vision_depth = depth
    return instantiate(root.vision).eval()


def _selection(V: int) -> torch.Tensor:
    """(B, V) hidden tokens of region_batch(): image 0 hides tokens 1 and 3, image 1 token 1, image 2 none."""
    selected = torch.zeros(B, V, dtype=torch.bool)
    selected[0, [1, 3]] = True
    selected[1, 1] = True
    return selected


def _hide(enc, V: int) -> InputMask:
    return InputMask(_selection(V), torch.randn(D, generator=torch.Generator().manual_seed(9)))


@pytest.mark.parametrize("name, width", [("vit", 3 * 8 * 8), ("conv", 8 * 4), ("region", 8 * 4), ("region_feats", F)])
def test_inputs_have_the_declared_width_and_zeros_for_the_leading_token(name, width):
    enc = _encoder(name, depth=1)
    assert enc.maskable_inputs and enc.input_dim == width
    with torch.no_grad():
        out = enc(region_batch())
    assert out.inputs.shape == (*out.tokens.shape[:2], width)
    assert not out.inputs[:, 0].any()  # [CLS] / [IMG] is learned, not embedded from an input


def test_patch_inputs_are_the_pixels_the_projection_sees():
    enc = PatchEncoder(D, image_size=16, patch_size=8, heads=H).eval()
    pixels = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16) / 1000  # hand-made, all distinct
    with torch.no_grad():
        out = enc({"pixel_values": pixels})
        embedded = enc.patch_embed(pixels).flatten(2).transpose(1, 2)  # (B, 4, D)
    for k, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):  # row-major patch order, token 1 + k
        torch.testing.assert_close(out.inputs[:, 1 + k], pixels[:, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8].flatten(1))
    # the input feature is exactly what the linear patch projection maps: patch_embed = inputs @ W^T + b
    W, b = enc.patch_embed.weight.flatten(1), enc.patch_embed.bias
    torch.testing.assert_close(torch.nn.functional.linear(out.inputs[:, 1:], W, b), embedded, atol=1e-5, rtol=1e-5)


def test_region_inputs_are_the_appearance_features_as_they_enter():
    batch = pad_regions(region_batch(), extra=1, seed=3, fill_feats=float("nan"))  # padding holds NaN
    real = batch["region_mask"][..., None]
    with torch.no_grad():
        out = feature_encoder()(batch)
        enc = region_encoder()
        roi = enc(batch)
        boxes = torch.where(real, batch["region_boxes"], 0.0)
        expected = enc.roi_features(enc.backbone(batch["pixel_values"]), boxes)  # (B, R, C)
    torch.testing.assert_close(out.inputs[:, 1:], torch.where(real, batch["region_feats"], 0.0))
    torch.testing.assert_close(roi.inputs[:, 1:], torch.where(real, expected, 0.0))  # padding: zeros


@pytest.mark.parametrize("name", MASKABLE)
def test_depth_0_hidden_encoding_is_token_replacement(name):
    """Without blocks the tokens do not mix: the hidden encoding is the plain one with exactly the hidden
    tokens replaced (what MRM did before it hid inputs; it keeps the position / box embedding now)."""
    enc = _encoder(name, depth=0)
    batch = region_batch()
    with torch.no_grad():
        plain = enc(batch)
        hide = _hide(enc, plain.tokens.shape[1])
        masked = enc(batch, hide=hide)
    selected = hide.selected
    torch.testing.assert_close(masked.tokens[~selected], plain.tokens[~selected], atol=0, rtol=0)
    assert not torch.allclose(masked.tokens[selected], plain.tokens[selected])
    torch.testing.assert_close(masked.inputs, plain.inputs, atol=0, rtol=0)  # hiding changes no input feature


def test_depth_0_hidden_token_is_mask_embedding_at_its_position_or_box():
    batch = region_batch()
    patch = _encoder("vit", depth=0)
    regions = _encoder("region_feats", depth=0)
    with torch.no_grad():
        hp = _hide(patch, 1 + 16)
        tokens = patch(batch, hide=hp).tokens  # 4x4 patches of 8 pixels
        torch.testing.assert_close(tokens[0, 3], hp.embedding + patch.position_embeddings[0, 3])
        hr = _hide(regions, 4)
        tokens = regions(batch, hide=hr).tokens
        box = regions.embed.box(batch["region_boxes"][0, 2])  # token 3 of image 0 is region 2
        torch.testing.assert_close(tokens[0, 3], (hr.embedding + box) / 2)


@pytest.mark.parametrize("name", ["vit", "region_feats"])
def test_hidden_input_never_reaches_any_output_with_blocks(name):
    """With blocks (depth 2) every token attends to every other: changing a hidden patch's pixels or a hidden
    region's feature changes no output, while the same change without hiding changes the other tokens."""
    enc = _encoder(name, depth=2)
    batch = region_batch()
    changed = {k: v.clone() for k, v in batch.items()}
    if name == "vit":
        changed["pixel_values"][0, :, 0:8, 0:8] = torch.rand(3, 8, 8) * 2 - 1  # patch 0 = token 1 of image 0
    else:
        changed["region_feats"][0, 0] = torch.randn(F) * 3  # region 0 = token 1 of image 0
    with torch.no_grad():
        hide = _hide(enc, enc(batch).tokens.shape[1])
        a, b = enc(batch, hide=hide), enc(changed, hide=hide)
        plain_a, plain_b = enc(batch), enc(changed)
    torch.testing.assert_close(a.tokens, b.tokens, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.pooled, b.pooled, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(a.inputs[0, 1], b.inputs[0, 1])  # the target did change
    assert not torch.allclose(plain_a.tokens[0, 2:], plain_b.tokens[0, 2:], atol=1e-4)  # without hiding it leaks


def test_input_mask_refuses_a_wrong_layout_and_the_leading_token():
    enc = _encoder("region_feats", depth=1)
    batch = region_batch()
    with pytest.raises(ValueError, match=r"expected \(3, 4\)"):
        enc(batch, hide=InputMask(torch.zeros(B, 5, dtype=torch.bool), torch.zeros(D)))
    selected = torch.zeros(B, 4, dtype=torch.bool)
    selected[0, 0] = True
    with pytest.raises(ValueError, match="nothing to hide"):
        enc(batch, hide=InputMask(selected, torch.zeros(D)))


def test_model_refuses_hiding_with_an_encoder_that_cannot():
    timm = pytest.importorskip("timm")  # noqa: F841
    from mmbench.models.fusion.merged import MergedFusion
    from mmbench.models.layers import masked_mean
    from mmbench.models.model import MultimodalModel
    from mmbench.models.text import TextTransformer
    from mmbench.models.vision.hf import HFVisionEncoder
    from mmbench.models.vision.timm import TimmEncoder

    assert HFVisionEncoder.maskable_inputs is False
    model = MultimodalModel(
        TextTransformer(vocab_size=50, dim=D, depth=0, heads=H, max_len=16, pooling=masked_mean),
        TimmEncoder("resnet18", dim=D),
        MergedFusion(dim=D, depth=1, heads=H),
        dim=D,
    ).eval()
    batch = {"pixel_values": torch.rand(1, 3, S, S) * 2 - 1}
    V = model.encode_image(batch).tokens.shape[1]
    assert model.vision_input_dim is None
    with pytest.raises(ValueError, match="TimmEncoder cannot hide input tokens.*encoder/vision=patch, vit, conv"):
        model.encode_image(batch, hide=InputMask(torch.zeros(1, V, dtype=torch.bool), torch.zeros(D)))


def test_region_encoder_without_boxes_sees_place_only_through_its_roi_features():
    """boxes=False (VisualBERT's input): a region's token is a function of its RoI feature alone, so
    the same features with other box coordinates give the same tokens; with the box embedding
    (LXMERT, the default) they do not."""
    batch = region_batch()
    g = torch.Generator().manual_seed(5)
    for boxes in (False, True):
        torch.manual_seed(0)
        enc = RegionEncoder(D, ConvBackbone(width=8, stages=2), image_size=S, depth=1, heads=H, boxes=boxes).eval()
        with torch.no_grad():
            tokens = enc(batch).tokens  # (B, 1 + R, D)
            feats = enc.roi_features(enc.backbone(batch["pixel_values"]), batch["region_boxes"])  # (B, R, C)
            moved = {**batch, "region_feats": feats, "region_boxes": random_boxes((B, 3), g)}
            tokens_moved = enc.regions(moved).tokens
        mask = batch["region_mask"]
        same = torch.allclose(tokens[:, 1:][mask], tokens_moved[:, 1:][mask], atol=1e-5)
        assert same is (not boxes), boxes


def test_sincos_positions_match_timm_and_depend_only_on_the_offset():
    from mmbench.models.vision.patch import sincos_2d

    timm_pos = pytest.importorskip("timm.layers.pos_embed_sincos")
    pos = sincos_2d(grid=5, dim=D)  # (25, D), row-major
    torch.testing.assert_close(pos, timm_pos.build_sincos2d_pos_embed([5, 5], dim=D))
    cells = [(r, c) for r in range(5) for c in range(5)]
    by_offset: dict[tuple[int, int], list[float]] = {}
    for i, (r1, c1) in enumerate(cells):
        for j, (r2, c2) in enumerate(cells):
            by_offset.setdefault((r2 - r1, c2 - c1), []).append(float(pos[i] @ pos[j]))
    # <PE(p), PE(q)> is a function of q - p alone: every pair at one offset has the same dot product
    assert all(max(v) - min(v) < 1e-4 for v in by_offset.values())
    assert by_offset[(0, 0)][0] == pytest.approx(D / 2)  # sin^2 + cos^2 over dim/2 pairs
    assert by_offset[(0, 1)][0] < by_offset[(0, 0)][0] - 1e-3  # neighbours differ from the cell itself


def test_sincos_positions_are_fixed_and_added_to_the_patch_embeddings():
    from mmbench.models.vision.patch import sincos_2d

    torch.manual_seed(0)
    enc = PatchEncoder(D, image_size=16, patch_size=8, depth=0, heads=H, positions="sincos").eval()
    assert not any("position" in name for name, _ in enc.named_parameters())
    assert "position_embeddings" not in enc.state_dict()  # recomputed, never trained or saved
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = enc({"pixel_values": pixels})
        patches = enc.patch_embed(pixels).flatten(2).transpose(1, 2)  # (B, 4, D)
    torch.testing.assert_close(out.tokens[:, 1:], patches + sincos_2d(2, D))  # depth 0: the embeddings themselves
    torch.testing.assert_close(out.tokens[:, 0], enc.cls_token[0].expand(2, -1))  # [CLS]: no position added
    conv = ConvEncoder(D, ConvBackbone(width=8, stages=2), image_size=S, heads=H, positions="sincos")
    assert conv.grid_encoder.position_embeddings.shape == (1, 1 + (S // 4) ** 2, D)
    with pytest.raises(ValueError, match="positions=rotary: one of learned, sincos"):
        PatchEncoder(D, image_size=16, patch_size=8, positions="rotary")
    with pytest.raises(ValueError, match="dim=30: positions=sincos needs a width divisible by 4"):
        PatchEncoder(30, image_size=16, patch_size=8, heads=2, positions="sincos")
