"""GPT-2 (`GPT2Model`) -> the language model part (`GPTDecoder`) of any preset that has one (model=llava, frozen).

    wte, wpe                                   -> word_embeddings, position_embeddings
    h.i.ln_1, h.i.attn.c_attn (q|k|v), c_proj  -> blocks.i.norms.self_attn, blocks.i.sublayers.self_attn.{q,k,v,proj}
    h.i.ln_2, h.i.mlp.c_fc, c_proj             -> blocks.i.norms.mlp, blocks.i.sublayers.mlp.{fc1,fc2}
    ln_f                                       -> norm;  the LM head is tied to wte on both sides

GPT-2's `Conv1D` stores weights as (in, out), the transpose of `nn.Linear`'s. The checkpoint's width
becomes `model.dim` (the fused width is the LM's); its depth, heads, positions, MLP width, LayerNorm eps
and activation go to the decoder's constructor. Vision encoder and connector are left as built.
"""

from __future__ import annotations

from mmbench.models.convert.common import StateMap, activation
from mmbench.models.decoder import GPTDecoder

MODEL_TYPE = "gpt2"
PARTS = {"language_model": GPTDecoder}


def sizes(config) -> dict:
    return {"dim": config.n_embd}


def part_kwargs(config, processor: dict) -> dict[str, dict]:
    return {
        "language_model": dict(
            depth=config.n_layer,
            heads=config.n_head,
            max_len=config.n_positions,
            mlp_ratio=(config.n_inner or 4 * config.n_embd) / config.n_embd,
            norm_eps=config.layer_norm_epsilon,
            act_layer=activation(config.activation_function),
        )
    }


def conv1d(sm: StateMap, part: str, dst: str, src: str) -> None:
    """GPT-2 `Conv1D` (weight (in, out)) -> `nn.Linear` (weight (out, in))."""
    sm.put(part, f"{dst}.weight", sm.get(f"{src}.weight").T)
    sm.copy(part, f"{dst}.bias", f"{src}.bias")


def convert(sm: StateMap, config, model) -> None:
    part, D = "language_model", config.n_embd
    sm.copy(part, "word_embeddings.weight", "wte.weight")
    sm.copy(part, "position_embeddings.weight", "wpe.weight")
    for i in range(config.n_layer):
        dst, src = f"blocks.{i}", f"h.{i}"
        qkv_w, qkv_b = sm.get(f"{src}.attn.c_attn.weight").T, sm.get(f"{src}.attn.c_attn.bias")  # (3D, D), (3D,)
        for j, name in enumerate(("q", "k", "v")):
            sm.put(part, f"{dst}.sublayers.self_attn.{name}.weight", qkv_w[j * D : (j + 1) * D])
            sm.put(part, f"{dst}.sublayers.self_attn.{name}.bias", qkv_b[j * D : (j + 1) * D])
        conv1d(sm, part, f"{dst}.sublayers.self_attn.proj", f"{src}.attn.c_proj")
        sm.affine(part, f"{dst}.norms.self_attn", f"{src}.ln_1")
        conv1d(sm, part, f"{dst}.sublayers.mlp.fc1", f"{src}.mlp.c_fc")
        conv1d(sm, part, f"{dst}.sublayers.mlp.fc2", f"{src}.mlp.c_proj")
        sm.affine(part, f"{dst}.norms.mlp", f"{src}.ln_2")
    sm.affine(part, "norm", "ln_f")
