"""Zero-shot classification through ITC with text prompts (CLIP's protocol), top-1.

The data supplies the classes (`inputs.zeroshot_classes`, from its data config): for the fields named
in the prompt template, every class as a tuple of values and each image's set of true classes. Shapes
(`mmbench/data/object_classes.py`): with the default "a {color} {shape}", every (colour, shape) pair of
the split's objects (6 x 4 = 24 prompts), and an image's labels are its objects' classes. Each prompt and
each image is encoded once; an image's prediction is the prompt with the highest ITC cosine similarity.

* `zeroshot/top1`: the predicted class is one of the image's labels (all images);
* `zeroshot/top1_single`: plain top-1 accuracy on the images with exactly one label (one object).

Needs an objective with `embed` (ITC) and data that supplies classes; otherwise `Unavailable` says which.
"""

from __future__ import annotations

import string

import torch

from mmbench.metrics.common import Inputs, Unavailable, embedder, encode_images, encode_texts, eval_mode


def template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def zeroshot(module, inputs: Inputs, *, batch_size: int, max_images: int | None, template: str) -> dict[str, float]:
    itc = embedder(module)
    if itc is None:
        raise Unavailable("needs the itc objective (prompts and images in one embedding space)")
    if inputs.zeroshot_classes is None:
        raise Unavailable("the data supplies no zero-shot classes (data.zeroshot_classes; Shapes has them)")
    fields = template_fields(template)
    if not fields:
        raise Unavailable(f"the prompt template {template!r} names no field (e.g. 'a {{color}} {{shape}}')")
    dataset = inputs.dataset
    n = len(dataset.images) if max_images is None else min(max_images, len(dataset.images))
    try:
        classes, truth = inputs.zeroshot_classes(dataset.split, fields, n)
    except ValueError as e:
        raise Unavailable(str(e)) from None
    prompts = [template.format(**dict(zip(fields, c))) for c in classes]
    model = module.model
    with eval_mode(module):
        image = encode_images(model, inputs, list(range(n)), batch_size)
        text = encode_texts(model, inputs, prompts, batch_size)
        text_emb, image_emb = itc.embed(text.pooled, image.pooled)
        predicted = (image_emb @ text_emb.T).argmax(1).tolist()  # (N,)
    right = torch.tensor([classes[p] in truth[r] for r, p in enumerate(predicted)], dtype=torch.float)
    single = torch.tensor([len(labels) == 1 for labels in truth])
    out = {"zeroshot/top1": right.mean().item()}
    if single.any():
        out["zeroshot/top1_single"] = right[single].mean().item()
    return out
