"""Vector (pooled-feature) fusions: shapes, capabilities, gradients, known answers, interactions."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from mmbench.models.fusion.bilinear import BilinearFusion, LowRankBilinearFusion
from mmbench.models.fusion.gated import GatedFusion
from mmbench.models.fusion.late import LateFusion
from mmbench.models.fusion.tensor import LowRankTensorFusion, TensorFusion, outer_with_one
from mmbench.models.fusion.vector import ConcatFusion, ElementwiseFusion, MaxFusion, MultiplicativeFusion, SumFusion
from mmbench.models.outputs import Features
from tests.conftest import compose_cfg

B, D = 4, 8

# config name -> class (LowRankTensorFusion has no config file yet)
FUSIONS = {
    "concat": ConcatFusion,
    "sum": SumFusion,
    "max": MaxFusion,
    "multiplicative": MultiplicativeFusion,
    "gated": GatedFusion,
    "bilinear": BilinearFusion,
    "low_rank_bilinear": LowRankBilinearFusion,
    "tensor": TensorFusion,
    "late": LateFusion,
}
ALL = list(FUSIONS.values()) + [LowRankTensorFusion]
INTERACTING = [
    MultiplicativeFusion,
    GatedFusion,
    BilinearFusion,
    LowRankBilinearFusion,
    TensorFusion,
    LowRankTensorFusion,
]


def features(pooled: torch.Tensor) -> Features:
    """Features with dummy tokens: vector fusions must only read `pooled`."""
    n = pooled.shape[0]
    return Features(tokens=torch.full((n, 3, 5), float("nan")), mask=torch.ones(n, 3, dtype=torch.bool), pooled=pooled)


def vectors(dt=D, dv=D, n=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dt, generator=g), torch.randn(n, dv, generator=g)


def build(cls, dim=D, text_dim=None, image_dim=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cls(dim=dim, text_dim=text_dim, image_dim=image_dim, **kwargs).eval()


def fuse(fusion, t, v) -> torch.Tensor:
    return fusion(features(t), features(v)).pooled


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
@pytest.mark.parametrize("dims", [(D, D), (6, 10)], ids=["equal_dims", "text6_image10"])
def test_shapes_and_capabilities(cls, dims):
    dt, dv = dims
    fusion = build(cls, dim=D, text_dim=dt, image_dim=dv)
    t, v = vectors(dt, dv)
    out = fusion(features(t), features(v))
    assert out.pooled.shape == (B, D) and torch.isfinite(out.pooled).all()
    assert out.text_tokens is None and out.image_tokens is None
    assert cls.capabilities.joint_pooled and not cls.capabilities.causal_text
    assert not cls.capabilities.text_tokens


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_causal_text_is_refused(cls):
    t, v = vectors()
    with pytest.raises(ValueError, match="causal_text"):
        build(cls)(features(t), features(v), causal_text=True)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_gradients_reach_both_modalities(cls):
    fusion = build(cls).train()
    t, v = vectors()
    t.requires_grad_(True)
    v.requires_grad_(True)
    fuse(fusion, t, v).pow(2).sum().backward()
    assert t.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
    assert all(p.grad is not None for p in fusion.parameters())


# ----------------------------------------------------------------------------- known answers


def _identity(linear: nn.Linear) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.eye(*linear.weight.shape))
        linear.bias.zero_()


@pytest.mark.parametrize(
    "cls, expected",
    [(SumFusion, torch.add), (MaxFusion, torch.maximum), (MultiplicativeFusion, torch.mul)],
    ids=["sum", "max", "multiplicative"],
)
def test_elementwise_with_identity_weights(cls, expected):
    fusion = build(cls, act_layer=nn.Identity)
    for linear in (fusion.text_proj, fusion.image_proj, fusion.out):
        _identity(linear)
    t, v = vectors()
    torch.testing.assert_close(fuse(fusion, t, v), expected(t, v))


def test_elementwise_takes_any_combine_and_refuses_none():
    fusion = build(ElementwiseFusion, act_layer=nn.Identity, combine=torch.sub)
    for linear in (fusion.text_proj, fusion.image_proj, fusion.out):
        _identity(linear)
    t, v = vectors()
    torch.testing.assert_close(fuse(fusion, t, v), t - v)
    with pytest.raises(ValueError, match="needs `combine`"):
        build(ElementwiseFusion)


def test_concat_is_one_linear_over_the_concatenation():
    fusion = build(ConcatFusion, text_dim=6, image_dim=10)
    t, v = vectors(6, 10)
    W, b = fusion.proj.weight, fusion.proj.bias  # (D, 16), (D,)
    expected = nn.functional.gelu(t @ W[:, :6].T + v @ W[:, 6:].T + b)
    torch.testing.assert_close(fuse(fusion, t, v), expected)


@pytest.mark.parametrize("gate_bias, which", [(40.0, "text"), (-40.0, "image"), (0.0, "mean")])
def test_gated_fusion_gate_selects_modality(gate_bias, which):
    fusion = build(GatedFusion, text_dim=6, image_dim=10)
    with torch.no_grad():
        fusion.gate.weight.zero_()
        fusion.gate.bias.fill_(gate_bias)
    t, v = vectors(6, 10)
    h_t, h_v = torch.tanh(fusion.text_proj(t)), torch.tanh(fusion.image_proj(v))
    expected = {"text": h_t, "image": h_v, "mean": (h_t + h_v) / 2}[which]
    torch.testing.assert_close(fuse(fusion, t, v), expected)


def test_bilinear_matches_einsum():
    fusion = build(BilinearFusion, text_dim=6, image_dim=10, act_layer=nn.Identity)
    t, v = vectors(6, 10)
    W, b = fusion.bilinear.weight, fusion.bilinear.bias  # (D, 6, 10), (D,)
    expected = torch.einsum("bi,kij,bj->bk", t, W, v) + b
    torch.testing.assert_close(fuse(fusion, t, v), expected)
    assert sum(p.numel() for p in fusion.parameters()) == 6 * 10 * D + D


def test_bilinear_equals_nn_bilinear_with_its_gradients():
    """The one-GEMM form computes nn.Bilinear's function: outputs and every gradient equal torch's own forward."""
    fusion = build(BilinearFusion, text_dim=6, image_dim=10, act_layer=nn.Identity)
    t, v = (x.requires_grad_() for x in vectors(6, 10))
    ours = fuse(fusion, t, v)
    torch_s = fusion.bilinear(t, v)
    torch.testing.assert_close(ours, torch_s)
    grads = lambda out: torch.autograd.grad((out * torch.arange(D)).sum(), [t, v, *fusion.parameters()])
    for a, b in zip(grads(ours), grads(torch_s), strict=True):
        torch.testing.assert_close(a, b)


def test_low_rank_bilinear_is_a_bilinear_form_of_the_squashed_projections():
    """MLB: z_k = sum_j P_jk tanh(u_j) tanh(v_j) = tanh(u)^T diag(P_k) tanh(v)."""
    fusion = build(LowRankBilinearFusion, text_dim=6, image_dim=10, rank=12, act_layer=nn.Identity)
    t, v = vectors(6, 10)
    u, w = torch.tanh(fusion.text_proj(t)), torch.tanh(fusion.image_proj(v))  # (B, 12)
    W = torch.diag_embed(fusion.out.weight)  # (D, 12, 12): diag(P_k)
    expected = torch.einsum("bi,kij,bj->bk", u, W, w) + fusion.out.bias
    torch.testing.assert_close(fuse(fusion, t, v), expected)


def test_outer_with_one_contains_unimodal_terms():
    a, b = vectors(3, 5)
    Z = outer_with_one(a, b)  # (B, 4, 6)
    assert Z.shape == (B, 4, 6)
    torch.testing.assert_close(Z[:, :3, 5], a)  # last column: text vector
    torch.testing.assert_close(Z[:, 3, :5], b)  # last row: image vector
    torch.testing.assert_close(Z[:, :3, :5], torch.einsum("bi,bj->bij", a, b))  # bimodal products
    torch.testing.assert_close(Z[:, 3, 5], torch.ones(B))


def test_tensor_fusion_matches_hand_computation():
    fusion = build(TensorFusion, text_dim=6, image_dim=10, factor_dim=3, act_layer=nn.Identity)
    t, v = vectors(6, 10)
    a, b = fusion.text_proj(t), fusion.image_proj(v)  # (B, 3)
    W = fusion.out.weight.view(D, 4, 4)  # (D, f+1, f+1) over [a; 1] x [b; 1]
    expected = (
        torch.einsum("bi,kij,bj->bk", a, W[:, :3, :3], b)  # multiplicative terms
        + a @ W[:, :3, 3].T  # unimodal text
        + b @ W[:, 3, :3].T  # unimodal image
        + W[:, 3, 3]
        + fusion.out.bias
    )
    torch.testing.assert_close(fuse(fusion, t, v), expected)
    assert sum(p.numel() for p in fusion.parameters()) == (6 * 3 + 3) + (10 * 3 + 3) + (16 * D + D)


def test_low_rank_tensor_fusion_is_a_rank_r_tensor_fusion():
    """LMF equals a TFN over the raw [x_t; 1], [x_v; 1] whose weight tensor is sum_r A^(r) ⊗ B^(r)."""
    R = 3
    fusion = build(LowRankTensorFusion, text_dim=6, image_dim=10, rank=R, act_layer=nn.Identity)
    t, v = vectors(6, 10)
    A = torch.cat([fusion.text_factors.weight, fusion.text_factors.bias[:, None]], 1).view(R, D, 7)
    Bf = torch.cat([fusion.image_factors.weight, fusion.image_factors.bias[:, None]], 1).view(R, D, 11)
    W = torch.einsum("rki,rkj->kij", A, Bf)  # (D, 7, 11) full TFN weight, rank <= R
    expected = torch.einsum("bij,kij->bk", outer_with_one(t, v), W)
    torch.testing.assert_close(fuse(fusion, t, v), expected)


# ----------------------------------------------------------------------------- interactions


def _interaction(fusion) -> torch.Tensor:
    """f(t1,v1) - f(t1,v2) - (f(t2,v1) - f(t2,v2)): zero for every additive f(t, v) = g(t) + h(v)."""
    t1, v1 = vectors(6, 10, seed=1)
    t2, v2 = vectors(6, 10, seed=2)
    with torch.no_grad():
        return (fuse(fusion, t1, v1) - fuse(fusion, t1, v2)) - (fuse(fusion, t2, v1) - fuse(fusion, t2, v2))


@pytest.mark.parametrize("learn_weights", [True, False])
def test_late_fusion_is_additive(learn_weights):
    fusion = build(LateFusion, text_dim=6, image_dim=10, learn_weights=learn_weights)
    with torch.no_grad():
        fusion.weight_logits.copy_(torch.tensor([0.3, -1.2]))
    torch.testing.assert_close(_interaction(fusion), torch.zeros(B, D))
    t, v = vectors(6, 10)
    w = torch.tensor([0.3, -1.2]).softmax(0)
    torch.testing.assert_close(fuse(fusion, t, v), w[0] * fusion.text_head(t) + w[1] * fusion.image_head(v))
    assert isinstance(fusion.weight_logits, nn.Parameter) == learn_weights


@pytest.mark.parametrize("cls", [ConcatFusion, SumFusion], ids=lambda c: c.__name__)
def test_linear_fusions_without_activation_are_additive(cls):
    fusion = build(cls, text_dim=6, image_dim=10, act_layer=nn.Identity)
    torch.testing.assert_close(_interaction(fusion), torch.zeros(B, D))


@pytest.mark.parametrize("cls", INTERACTING, ids=lambda c: c.__name__)
def test_interaction_exists(cls):
    fusion = build(cls, text_dim=6, image_dim=10)
    assert _interaction(fusion).abs().max() > 1e-3


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", list(FUSIONS))
def test_config_instantiates(name):
    cfg = compose_cfg([f"fusion={name}", "model.sizes.tiny.dim=16", "model.vision_dim=24"])
    fusion = instantiate(cfg.fusion)
    assert type(fusion) is FUSIONS[name]
    t, v = vectors(16, 24)
    assert fuse(fusion.eval(), t, v).shape == (B, 16)
