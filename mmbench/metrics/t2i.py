"""Text-to-image, scored exactly: images generated for the split's captions, read back into scenes by the data's
oracle (Shapes: `mmbench.t2i.SceneOracle`, a classifier of each grid cell trained on Shapes' own renders), and
each caption's claim checked on the scene read (issue 35).

For the first `max_images` images of the split, every caption is drawn once, caption k of the run from its own
generator seeded `seed + k` (an image does not depend on the captions generated beside it). Metrics:

* `t2i/<caption type>/<criterion>`: the share of images meeting each criterion of their caption type (present,
  color, size, count, relation, extra; `faithful`, `caption_true`), and `t2i/overall/...` over every type
  (`mmbench.t2i.compositional_scores`); `t2i/<type>/images` counts the images of each type;
* `t2i/oracle/cell`, `t2i/oracle/scene`: the oracle's own accuracy on held-out renders (it must be near 1.0 for
  the scores above to mean what they say);
* `t2i/frechet`: the Frechet distance between the oracle's features of the real images of those rows and of the
  generated ones, one real image per caption (>= 2 images each);
* `t2i/agreement`: the mean ITC cosine of each generated image with its caption, CLIPScore's analogue, when the
  run also trains an embedder (itc).

Protocol `t2i_unguided` (conf/eval/default.yaml) is the same with guidance 1 (the conditional model alone, no
classifier-free guidance), its metrics named `t2i_unguided/...`: the no-guidance arm of a sweep, read from the
same trained generator rather than a second training run.

With `return_predictions` (the suite's `Samples`) it also returns the first `SAMPLES` images with their captions
and whether the oracle judged each caption true: the grid `t2i_samples.png` of the run directory and W&B.

Needs an `ImageGenerator` objective (t2i_diffusion, t2i_ar) and a data config that offers an oracle (`data.t2i_oracle`);
otherwise `Unavailable` says which.
"""

from __future__ import annotations

import logging
from typing import cast

import numpy as np
import torch

from mmbench.data.batch import Batch
from mmbench.metrics.common import Inputs, Unavailable, chunks, embedder, eval_mode, required_column
from mmbench.objectives.base import ImageGenerator
from mmbench.objectives.t2i_diffusion import to_uint8
from mmbench.t2i import agreement, compositional_scores, frechet_distance, judge

log = logging.getLogger(__name__)

SAMPLES = 16  # generated images kept for the run's sample grid


def image_generator(module) -> ImageGenerator | None:
    """The objective that draws images from captions (t2i_diffusion, t2i_ar), or None."""
    return next((o for o in module.objectives.values() if isinstance(o, ImageGenerator)), None)


def generate(module, inputs: Inputs, captions: list[str], *, batch_size: int, guidance, steps, seed: int) -> np.ndarray:
    """(N, H, W, 3) uint8 images of `captions`, caption k drawn from a generator seeded `seed + k`."""
    generator_objective = image_generator(module)
    assert generator_objective is not None
    out = []
    device = inputs.device
    for part in chunks(len(captions), batch_size):
        ids, mask = inputs.texts(captions[part])
        seeds = [torch.Generator(device).manual_seed(seed + k) for k in range(part.start, part.stop)]
        batch = cast(Batch, {"input_ids": ids, "attention_mask": mask})  # the captions alone
        images = generator_objective.generate_images(
            module.model, batch, generator=seeds, guidance=guidance, steps=steps
        )
        out.append(to_uint8(images).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


def t2i(
    module,
    inputs: Inputs,
    *,
    batch_size: int,
    max_images: int | None,
    guidance,
    steps,
    seed: int,
    name: str,
    return_predictions: bool = False,
) -> dict[str, float] | tuple[dict[str, float], list]:
    """The metrics above, named `<name>/...` (`t2i_unguided`: the same protocol at guidance 1)."""
    if image_generator(module) is None:
        raise Unavailable("needs an image generator: the t2i_diffusion or t2i_ar objective")
    if inputs.t2i_oracle is None:
        raise Unavailable("the data offers no scene oracle to read generated images (data.t2i_oracle; Shapes has one)")
    dataset = inputs.dataset
    captions_by_row = required_column(dataset, "captions")
    claims_by_row = required_column(dataset, "caption_claims")
    n = len(dataset.images) if max_images is None else min(max_images, len(dataset.images))
    rows = [r for r in range(n) for _ in captions_by_row[r]]  # (image row of each caption)
    captions = [c for r in range(n) for c in captions_by_row[r]]
    claims = [c for r in range(n) for c in claims_by_row[r]]
    with torch.enable_grad():  # the suite runs under no_grad; a first use trains the oracle (seconds, then cached)
        oracle = inputs.t2i_oracle()
    if (oracle.accuracy or {}).get("cell", 1.0) < 0.99:
        log.warning(
            "the t2i oracle reads only %.1f%% of held-out cells right at this image size: its scores are approximate",
            100 * oracle.accuracy["cell"],
        )
    with eval_mode(module):
        images = generate(module, inputs, captions, batch_size=batch_size, guidance=guidance, steps=steps, seed=seed)
    scenes = oracle.read(images)
    out = {f"{name}/{k}": v for k, v in compositional_scores(scenes, claims).items()}
    out |= {f"{name}/oracle/{k}": float(v) for k, v in (oracle.accuracy or {}).items()}
    real = np.stack([np.asarray(dataset.images[r]) for r in rows])  # the true image of each caption
    if len(real) >= 2 and len(images) >= 2:
        out[f"{name}/frechet"] = frechet_distance(
            oracle.features, real, images, num_features=int(oracle.features(real[:1]).shape[1])
        )
    itc = embedder(module)
    if itc is not None:
        scores = agreement(module.model, itc, inputs.collate, images, captions, batch_size=batch_size)
        out[f"{name}/agreement"] = scores.mean().item()
    if return_predictions:  # (row, caption, image (H, W, 3) uint8, the caption judged true of the scene read)
        kept = range(min(SAMPLES, len(images)))
        truth = [bool(judge(scenes[k], claims[k]).get("caption_true")) for k in kept]
        return out, [(rows[k], captions[k], images[k], truth[i]) for i, k in enumerate(kept)]
    return out
