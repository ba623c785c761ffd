"""Shared pieces of the weight importers: a recording state-dict mapper and the BERT-layer mapping.

Names on the left are mmbench's (`Block`: `sublayers.{self_attn,cross_attn,mlp}`, `norms.*`,
`Attention`: `q, k, v, proj`, `MLP`: `fc1, fc2`); names on the right are the HF checkpoint's.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.models.layers import Activation, QuickGELU

#: HF `hidden_act` -> mmbench activation layer (exact equivalents only)
ACTIVATIONS: dict[str, Activation] = {
    "gelu": nn.GELU,
    "quick_gelu": QuickGELU,
    "gelu_new": functools.partial(nn.GELU, approximate="tanh"),
    "gelu_pytorch_tanh": functools.partial(nn.GELU, approximate="tanh"),
    "relu": nn.ReLU,
}


def single_width_sizes(config, text_depth: int, vision_depth: int, fusion_depth: int, prenorm: bool) -> dict:
    """The model sizes of a BERT-style checkpoint with one width and one head count for every part
    (ViLT, VisualBERT, LXMERT): `model.*` keys the importer sets from the HF config."""
    H, heads = config.hidden_size, config.num_attention_heads
    return {
        **{"dim": H, "text_dim": H, "vision_dim": H},
        **{"heads": heads, "text_heads": heads, "vision_heads": heads},
        **{"text_depth": text_depth, "vision_depth": vision_depth, "fusion_depth": fusion_depth},
        "mlp_ratio": config.intermediate_size / H,
        "prenorm": prenorm,
    }


def activation(name: str) -> Activation:
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act='{name}' has no mmbench equivalent; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class StateMap:
    """Builds mmbench state dicts from an HF state dict and records which HF tensors were used."""

    def __init__(self, hf: dict[str, torch.Tensor]):
        self.hf = hf
        self.used: set[str] = set()
        self.parts: dict[str, dict[str, torch.Tensor]] = {}

    def get(self, key: str) -> torch.Tensor:
        if key not in self.hf:
            raise KeyError(f"the checkpoint has no tensor '{key}'")
        self.used.add(key)
        return self.hf[key]

    def put(self, part: str, key: str, value: torch.Tensor) -> None:
        self.parts.setdefault(part, {})[key] = value

    def copy(self, part: str, dst: str, src: str) -> None:
        self.put(part, dst, self.get(src))

    def affine(self, part: str, dst: str, src: str) -> None:
        """Linear or LayerNorm: weight and bias."""
        self.copy(part, f"{dst}.weight", f"{src}.weight")
        self.copy(part, f"{dst}.bias", f"{src}.bias")

    def attention(self, part: str, dst: str, q: str, k: str, v: str, out: str) -> None:
        for name, src in (("q", q), ("k", k), ("v", v), ("proj", out)):
            self.affine(part, f"{dst}.{name}", src)

    def unused(self) -> list[str]:
        return sorted(k for k in self.hf if k not in self.used)


def bert_layer(sm: StateMap, part: str, dst: str, src: str) -> None:
    """A post-norm BERT layer (`BertLayer`, also VisualBERT / LXMERT language and object layers) -> `Block`."""
    sm.attention(
        part,
        f"{dst}.sublayers.self_attn",
        f"{src}.attention.self.query",
        f"{src}.attention.self.key",
        f"{src}.attention.self.value",
        f"{src}.attention.output.dense",
    )
    sm.affine(part, f"{dst}.norms.self_attn", f"{src}.attention.output.LayerNorm")
    sm.affine(part, f"{dst}.sublayers.mlp.fc1", f"{src}.intermediate.dense")
    sm.affine(part, f"{dst}.sublayers.mlp.fc2", f"{src}.output.dense")
    sm.affine(part, f"{dst}.norms.mlp", f"{src}.output.LayerNorm")


def bert_text_embeddings(sm: StateMap, part: str, src: str, max_len: int) -> None:
    """BERT embeddings -> `TextTransformer` embeddings. With one segment the token-type embedding is a
    constant added before the LayerNorm, so it is folded into the position embeddings."""
    positions = sm.get(f"{src}.position_embeddings.weight")
    if max_len > positions.shape[0]:
        raise ValueError(
            f"data.max_text_len={max_len} exceeds the checkpoint's {positions.shape[0]} position embeddings; "
            f"set data.max_text_len<={positions.shape[0]}"
        )
    token_type = sm.get(f"{src}.token_type_embeddings.weight")[0]
    sm.copy(part, "word_embeddings.weight", f"{src}.word_embeddings.weight")
    sm.put(part, "position_embeddings.weight", positions[:max_len] + token_type)
    sm.affine(part, "norm", f"{src}.LayerNorm")


def resize_grid(pos: torch.Tensor, grid: int, mode: str = "bicubic", align_corners: bool = False) -> torch.Tensor:
    """Position embeddings (1 + g*g, D) of a g x g patch grid -> (1 + grid*grid, D); first row ([CLS]) kept."""
    old = int(round((pos.shape[0] - 1) ** 0.5))
    if old == grid:
        return pos
    cls, patches = pos[:1], pos[1:]
    patches = patches.T.reshape(1, -1, old, old)  # (1, D, g, g)
    patches = F.interpolate(patches, size=(grid, grid), mode=mode, align_corners=align_corners)
    return torch.cat([cls, patches.reshape(-1, grid * grid).T], dim=0)
