"""Cross-modality encoder of LXMERT (Tan & Bansal, 2019, "LXMERT: Learning Cross-Modality Encoder
Representations from Transformers").

Each of the `depth` layers is `LxmertXLayer`:

    1. bidirectional cross-attention, both directions from the pre-layer states:
           t' = CrossAttn(q = t, kv = v),   v' = CrossAttn(q = v, kv = t)
       with ONE cross-attention sublayer (attention + output projection + LayerNorm) SHARED by the two
       directions, exactly as LXMERT uses `LxmertXLayer.visual_attention` for both; this is what
       gives LXMERT its 207.9M parameters.
    2. per-stream self-attention, 3. per-stream FFN (separate weights for language and vision).

Built from the shared `Block`: the shared cross sublayer is `Block(self_attention=False,
cross_attention=True, feed_forward=False)`, steps 2+3 are one regular `Block` per stream (self-attention
then FFN). Post-norm (BERT layout) by default; `prenorm=True` adds a final LayerNorm per stream.

Joint vector: LXMERT's `LxmertPooler`, Linear + tanh on the first ([CLS]) text token.

Not causal-safe: vision attends to all text tokens and language attends back to vision.
"""

from __future__ import annotations

from torch import nn

from mmbench.models.fusion.two_stream import TwoStreamFusion
from mmbench.models.layers import Block, BlockOptions, Pooler
from mmbench.models.outputs import Capabilities, Features, Fused


class CrossEncoderLayer(nn.Module):
    """One `LxmertXLayer`: shared bidirectional cross-attention, then per-stream self-attention + FFN."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, prenorm: bool, dropout: float, norm_eps: float = 1e-5):
        super().__init__()
        kw: BlockOptions = dict(mlp_ratio=mlp_ratio, prenorm=prenorm, dropout=dropout, norm_eps=norm_eps)
        # LXMERT's `visual_attention`: one module for language->vision and vision->language.
        self.cross_attn = Block(dim, heads, self_attention=False, cross_attention=True, feed_forward=False, **kw)
        self.text_block = Block(dim, heads, **kw)  # lang_self_att + lang_inter/lang_output
        self.image_block = Block(dim, heads, **kw)  # visn_self_att + visn_inter/visn_output

    def forward(self, t, v, text_mask, image_mask):
        """t (B, T, D), v (B, V, D); text_mask (B, 1, 1, T), image_mask (B, 1, 1, V) SDPA masks."""
        t, v = (
            self.cross_attn(t, context=v, context_mask=image_mask),  # (B, T, D)
            self.cross_attn(v, context=t, context_mask=text_mask),  # (B, V, D), same weights, pre-layer t
        )
        return self.text_block(t, mask=text_mask), self.image_block(v, mask=image_mask)


class CrossEncoderFusion(TwoStreamFusion):
    capabilities = Capabilities(joint_pooled=True, text_tokens=True, image_tokens=True, causal_text=False)

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        prenorm: bool = False,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
    ):
        layers = (CrossEncoderLayer(dim, heads, mlp_ratio, prenorm, dropout, norm_eps) for _ in range(depth))
        super().__init__(layers, dim, prenorm, norm_eps)
        self.pooler = Pooler(dim)

    def forward(self, text: Features, image: Features, causal_text: bool = False) -> Fused:
        t, v = self.run_streams(text, image, causal_text)  # (B, T, D), (B, V, D)
        return Fused(text_tokens=t, image_tokens=v, pooled=self.pooler(t))
