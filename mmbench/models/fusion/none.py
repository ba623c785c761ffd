"""No fusion: the two-tower (dual encoder) layout of CLIP (Radford et al., 2021) and ALIGN.

The modalities only meet in the contrastive loss (ITC on `text.pooled` / `image.pooled`), so the
fusion produces nothing: no joint vector, no image-conditioned text tokens. Config validation uses
the all-False capabilities to refuse ITM, MLM, LM and VQA with this fusion.
"""

from __future__ import annotations

from torch import nn

from mmbench.models.outputs import Capabilities, Features, Fused


class NoFusion(nn.Module):
    capabilities = Capabilities(joint_pooled=False, text_tokens=False, causal_text=False)

    def __init__(self):
        super().__init__()

    def forward(self, text: Features, image: Features, causal_text: bool = False) -> Fused:
        return Fused(text_tokens=None, image_tokens=None, pooled=None)
