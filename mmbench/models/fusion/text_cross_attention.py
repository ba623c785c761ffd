"""Text-side cross-attention fusion: the multimodal encoder of ALBEF (Li et al., 2021, "Align before
Fuse") and BLIP's image-grounded text encoder / decoder (Li et al., 2022).

Only the text stream is updated. Each of the `depth` layers is a BERT layer with cross-attention,
`Block(self_attention=True, cross_attention=True)`:

    t = SelfAttn(t)                         text attends to text (padding mask; + causal mask for LM)
    t = CrossAttn(q = t, kv = image)        text attends to the image tokens (image padding mask)
    t = FFN(t)

Image tokens are returned unchanged (the image encoder never sees the text), so with
`causal_text=True` (BLIP's decoder) the text self-attention is causal and nothing can leak from a
later text token: this fusion is leakage-free for LM. Post-norm (BERT) by default.

Joint vector: the first ([CLS] / BLIP's [ENC]) text token's hidden state, used directly as ALBEF's
and BLIP's ITM heads do (`last_hidden_state[:, 0, :]` -> Linear); no BERT pooler.
"""

from __future__ import annotations

from torch import nn

from mmbench.models.layers import Block, attention_mask
from mmbench.models.outputs import Capabilities, Features, Fused


class TextCrossAttentionFusion(nn.Module):
    capabilities = Capabilities(joint_pooled=True, text_tokens=True, causal_text=True)

    def __init__(
        self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, prenorm: bool = False, dropout: float = 0.0
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=mlp_ratio, cross_attention=True, prenorm=prenorm, dropout=dropout)
            for _ in range(depth)
        )
        # A pre-norm stack ends un-normalised; post-norm blocks already end with a norm.
        self.norm = nn.LayerNorm(dim) if prenorm else nn.Identity()

    def forward(self, text: Features, image: Features, causal_text: bool = False) -> Fused:
        B, T, D = text.tokens.shape
        text_mask = attention_mask(text.mask, causal=causal_text)  # (B, 1, 1, T), causal_text: (B, 1, T, T)
        image_mask = attention_mask(image.mask)  # (B, 1, 1, V)
        t = text.tokens
        for block in self.blocks:
            t = block(t, mask=text_mask, context=image.tokens, context_mask=image_mask)  # (B, T, D)
        t = self.norm(t)
        return Fused(text_tokens=t, image_tokens=image.tokens, pooled=t[:, 0])
