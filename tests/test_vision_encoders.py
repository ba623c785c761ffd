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
    assert done.returncode == 0 and done.stdout.strip() == "ok", (
        f"exit {done.returncode}: {done.stderr[-2000:]}"
    )


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
                fmap[b : b + 1], [boxes[b] * S], output_size=4, spatial_scale=1 / enc.backbone.stride,
                sampling_ratio=2, aligned=True,
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
                "vision_dim": D, "vision_depth": 1, "vision_heads": H, "backbone_width": 8, "mlp_ratio": 4.0, "prenorm": True,
                "dropout": 0.0, "patch_size": 8, "region_feat_dim": F,
            },
            "data": {"image_size": S},
            "vision": OmegaConf.load(VISION_CONF / f"{vision_yaml}.yaml"),
        }
    )


@pytest.mark.parametrize(
    "name, cls", [("conv", ConvEncoder), ("region", RegionEncoder), ("region_feats", RegionFeatureEncoder), ("vit", PatchEncoder)]
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
