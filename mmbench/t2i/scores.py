"""Scores of generated images as a set: the Frechet distance on a feature extractor's features and the
image-text agreement of a trained ITC model. Neither knows a dataset.

* `frechet_distance(features, real, generated)`: FID's formula (Heusel et al., 2017),
  ||mu_r - mu_g||^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2)), computed by torchmetrics'
  `FrechetInceptionDistance` with `features` as its custom feature extractor (its accumulation in float64
  and its matrix square root, from the eigenvalues of S_r S_g). On Shapes the features are the oracle's
  penultimate ones (`oracle.SceneOracle.features`), not Inception's: Inception is trained on photographs
  and would need a download, while the oracle's features are the ones that tell Shapes scenes apart.
  Like FID it is biased upwards for finite sets: compare sets of equal size, and read it against the
  distance between two real sets of that size.
* `agreement(model, itc, collate, images, captions)`: CLIPScore's analogue (Hessel et al., 2021): per
  image the cosine of the model's ITC image and text embeddings for the caption it was generated from,
  without CLIPScore's rescaling w * max(cos, 0) (w = 2.5 suits CLIP ViT-B/32's cosines, not a small
  model's). A model without ITC has no shared space to score in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from mmbench.data.batch import Batch, to_device
from mmbench.metrics.common import eval_mode


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Torch on one CPU thread inside (the setting restored after), for ops too small to share out: on a busy
    2-core machine two OpenMP threads made a step of the oracle's training ~30x slower (148 ms vs 4.7 ms)
    and the eigenvalues of a 288 x 288 matrix ~15x slower (1.0 s vs 0.07 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Extractor(nn.Module):
    """A `features(images) -> (N, F)` callable as torchmetrics' custom feature extractor: the images pass
    through as given (here (N, S, S, 3) uint8), the features come back as float64."""

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor], num_features: int):
        super().__init__()
        self.extract = features
        self.num_features = num_features  # read by FrechetInceptionDistance instead of a dummy forward

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extract(images).double()


@torch.no_grad()
def frechet_distance(
    features: Callable[[torch.Tensor], torch.Tensor],
    real: np.ndarray | torch.Tensor,
    generated: np.ndarray | torch.Tensor,
    *,
    num_features: int,
    batch_size: int = 512,
) -> float:
    """The Frechet distance between Gaussians fitted to `features` of the real and of the generated images
    (each set needs >= 2 images); `features` maps a batch of images to (N, num_features)."""
    if len(real) < 2 or len(generated) < 2:
        raise ValueError(
            f"the Frechet distance needs >= 2 images per set, got {len(real)} real, {len(generated)} generated"
        )
    metric = FrechetInceptionDistance(feature=_Extractor(features, num_features), reset_real_features=True)
    for images, is_real in ((real, True), (generated, False)):
        tensor = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
        for start in range(0, len(tensor), batch_size):
            metric.update(tensor[start : start + batch_size], real=is_real)
    with single_thread():  # the eigenvalues of S_r S_g (num_features^2)
        return float(metric.compute())


@torch.no_grad()
def agreement(
    model,
    itc,
    collate: Callable[[list[dict]], Batch],
    images: np.ndarray | Sequence[np.ndarray],
    captions: Sequence[str],
    *,
    batch_size: int = 256,
) -> torch.Tensor:
    """(N,) cosine in [-1, 1] of each image's ITC embedding with its caption's: `model` a `MultimodalModel`,
    `itc` its ITC objective (`embed`), `collate` the data's collator (examples {"image", "image_id",
    "caption"} -> batch). The mean over images is the score."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images for {len(captions)} captions; give the caption of every image")
    if not hasattr(itc, "embed"):
        raise ValueError(f"{type(itc).__name__} has no `embed`: the agreement score needs the ITC objective")
    device = next(model.parameters()).device
    out = []
    with eval_mode(model), eval_mode(itc):
        for start in range(0, len(captions), batch_size):
            items = [
                {"image": np.asarray(images[i]), "image_id": -1 - i, "caption": captions[i]}
                for i in range(start, min(start + batch_size, len(captions)))
            ]
            batch = to_device(collate(items), device)
            text = model.encode_text(batch["input_ids"], batch["attention_mask"])
            image = model.encode_image(batch)
            text_emb, image_emb = itc.embed(text.pooled, image.pooled)  # (B, E) each, unit norm
            out.append((text_emb * image_emb).sum(-1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)
