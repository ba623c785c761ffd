"""Which texts are true of which images, from the claim codes a batch carries (ITC's `claim_positives`, ITM's
negatives).

The batch fields `text_claim` (B,) and `image_facts` (B, F) are int64 claim codes (mmbench/data/columns.py;
the data writes them with `mmbench.data.claims.claim_code`): 0 is an unknown claim (and the padding of
`image_facts`), equal claims have equal codes on every process, so texts gathered from other DDP ranks
compare too.
"""

from __future__ import annotations

import torch


def claims_true(image_facts: torch.Tensor, text_claims: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: text j is true of image i, i.e. its claim code is among the image's fact codes.

    image_facts (B, F) int64 (0 = padding), text_claims (N,) int64 (0 = unknown claim: never true).
    """
    hit = (image_facts[:, :, None] == text_claims[None, None, :]).any(1)  # (B, N)
    return hit & (text_claims != 0)[None, :]
