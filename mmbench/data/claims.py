"""What a data set's texts claim, as integer codes that batches carry and objectives compare.

A source may state, per caption, its canonical claim (`caption_claims`, "" = unknown) and, per image,
every claim true of it (`image_facts`); Shapes does (`mmbench.data.shapes.claim_of` / `scene_facts`).
Batches carry them as int64 codes (`text_claim` (B,), `image_facts` (B, F)), so that "text j is
true of image i" is one tensor comparison, also against texts gathered from other DDP ranks
(`mmbench.objectives.claims.claims_true`).
"""

from __future__ import annotations

import hashlib


def claim_code(claim: str) -> int:
    """Stable positive int64 code of a claim string ("" -> 0, unknown); equal claims, equal codes on every
    process (blake2b, not the per-process salted `hash`), so codes can be gathered across DDP ranks."""
    if not claim:
        return 0
    return int.from_bytes(hashlib.blake2b(claim.encode(), digest_size=8).digest(), "little") >> 1 or 1
