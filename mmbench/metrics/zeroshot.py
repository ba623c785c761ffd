"""Zero-shot classification through ITC with text prompts (CLIP's protocol), top-1.

Classes are the combinations of object attributes named in the prompt template: with the default
"a {color} {shape}", every (colour, shape) pair formed from the values of the split's `obj_color`
and `obj_shape` columns (Shapes: 6 x 4 = 24 prompts). Each prompt and each image is encoded once;
an image's prediction is the prompt with the highest ITC cosine similarity.

A Shapes scene holds 1-3 objects, so an image has a *set* of true classes:

* `zeroshot/top1`: the predicted class is one of the image's objects (all images);
* `zeroshot/top1_single`: plain top-1 accuracy on the one-object images, where the label is unique.

Needs an objective with `embed` (ITC) and the `obj_<field>` columns; otherwise nothing is reported.
"""

from __future__ import annotations

import itertools
import string

import torch

from mmbench.metrics.common import Inputs, column, embedder, encode_images, encode_texts, eval_mode


def template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def zeroshot(module, inputs: Inputs, *, batch_size: int, max_images: int | None, template: str) -> dict[str, float]:
    itc = embedder(module)
    dataset = inputs.dataset
    fields = template_fields(template)
    columns = dataset.split.column_names
    if itc is None or not fields or any(f"obj_{f}" not in columns for f in fields):
        return {}
    n = len(dataset.images) if max_images is None else min(max_images, len(dataset.images))
    objects = [column(dataset, f"obj_{f}")[:n] for f in fields]  # per field: per image the objects' values
    truth = [set(zip(*(values[r] for values in objects))) for r in range(n)]  # per image: its classes
    values = [sorted({v for per_image in field_values for v in per_image}) for field_values in objects]
    classes = list(itertools.product(*values))
    prompts = [template.format(**dict(zip(fields, c))) for c in classes]
    model = module.model
    with eval_mode(module):
        image = encode_images(model, inputs, list(range(n)), batch_size)
        text = encode_texts(model, inputs, prompts, batch_size)
        text_emb, image_emb = itc.embed(text.pooled, image.pooled)
        predicted = (image_emb @ text_emb.T).argmax(1).tolist()  # (N,)
    right = torch.tensor([classes[p] in truth[r] for r, p in enumerate(predicted)], dtype=torch.float)
    single = torch.tensor([len(t) == 1 and len(objects[0][r]) == 1 for r, t in enumerate(truth)])
    out = {"zeroshot/top1": right.mean().item()}
    if single.any():
        out["zeroshot/top1_single"] = right[single].mean().item()
    return out
