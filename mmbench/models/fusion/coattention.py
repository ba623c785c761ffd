"""Two-stream co-attention fusion of ViLBERT (Lu et al., 2019, "ViLBERT: Pretraining Task-Agnostic
Visiolinguistic Representations for Vision-and-Language Tasks").

Each of the `depth` layers is ViLBERT's "Co-TRM followed by TRM" (Fig. 1 and 2b of the paper):

    Co-TRM (per stream): h_t = FFN(CrossAttn(q = t, kv = v)),  h_v = FFN(CrossAttn(q = v, kv = t))
                         both directions read the *pre-layer* states t, v (exchanged keys/values)
    TRM    (per stream): t = FFN(SelfAttn(h_t)),                v = FFN(SelfAttn(h_v))

Every sublayer is the shared `Block`: the Co-TRM is `Block(self_attention=False, cross_attention=True)`
(cross-attention + FFN, as in the paper's Fig. 2b and `BertConnectionLayer`), the TRM a regular
`Block`. Each stream has its own weights. Post-norm (BERT layout) by default; `prenorm=True` gives the
pre-norm variant with a final LayerNorm per stream. Unlike the original, both streams have width
`dim` (ViLBERT uses 768 for text and 1024 for the visual stream).

Joint vector: ViLBERT's alignment head input, the element-wise product of the pooled text ([CLS],
first text token through a `Pooler`) and the pooled image (first image token, the [IMG] / [CLS]
token, through its own `Pooler`). ViLBERT's poolers use ReLU; the shared `Pooler` uses tanh.

Not causal-safe: image tokens attend to every text token and text attends back to the image, so a
future text token would leak into earlier positions through the image stream after one layer.
"""

from __future__ import annotations

from torch import nn

from mmbench.models.fusion.two_stream import TwoStreamFusion
from mmbench.models.layers import Block, BlockOptions, Pooler
from mmbench.models.outputs import Capabilities, Features, Fused


class CoAttentionLayer(nn.Module):
    """One ViLBERT layer: co-attention (Co-TRM) on both streams, then per-stream self-attention (TRM)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, prenorm: bool, dropout: float):
        super().__init__()
        kw: BlockOptions = dict(mlp_ratio=mlp_ratio, prenorm=prenorm, dropout=dropout)
        self.text_coattn = Block(dim, heads, self_attention=False, cross_attention=True, **kw)  # text queries image
        self.image_coattn = Block(dim, heads, self_attention=False, cross_attention=True, **kw)  # image queries text
        self.text_block = Block(dim, heads, **kw)
        self.image_block = Block(dim, heads, **kw)

    def forward(self, t, v, text_mask, image_mask):
        """t (B, T, D), v (B, V, D); text_mask (B, 1, 1, T), image_mask (B, 1, 1, V) SDPA masks."""
        t, v = (
            self.text_coattn(t, context=v, context_mask=image_mask),  # (B, T, D)
            self.image_coattn(v, context=t, context_mask=text_mask),  # (B, V, D), reads the pre-layer t
        )
        return self.text_block(t, mask=text_mask), self.image_block(v, mask=image_mask)


class CoAttentionFusion(TwoStreamFusion):
    capabilities = Capabilities(joint_pooled=True, text_tokens=True, image_tokens=True, causal_text=False)

    def __init__(
        self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, prenorm: bool = False, dropout: float = 0.0
    ):
        super().__init__(
            (CoAttentionLayer(dim, heads, mlp_ratio, prenorm, dropout) for _ in range(depth)), dim, prenorm
        )
        self.text_pooler = Pooler(dim)
        self.image_pooler = Pooler(dim)

    def forward(self, text: Features, image: Features, causal_text: bool = False) -> Fused:
        t, v = self.run_streams(text, image, causal_text)  # (B, T, D), (B, V, D)
        pooled = self.text_pooler(t) * self.image_pooler(v)  # (B, D) ViLBERT's "prod" alignment vector
        return Fused(text_tokens=t, image_tokens=v, pooled=pooled)
