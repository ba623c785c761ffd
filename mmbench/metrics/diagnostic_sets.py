"""The diagnostic sets papers cite, evaluated only: Winoground, ARO (VG-Relation, VG-Attribution), SugarCrepe.

Each protocol reads a set's released files under its own `root` (no split of the run's data is used),
builds the images as the data pipeline builds the run's images (decoded as RGB, ARO's box cropped
first, short side resized to the model's image size and centre-cropped: `square_image`; the collator
maps pixels to [-1, 1]) and scores every (image, caption) pair with the objective of the highest
`pair_score_rank` (ITM's match log-odds, else ITC's cosine), like the Shapes diagnostics. Texts are
tokenised by the run's tokenizer. Each distinct image is decoded and encoded once.

With s(caption, image) and ties counted as failures:

* Winoground (Thrush et al., 2022), per example (c0, i0, c1, i1):
    text  = s(c0, i0) > s(c1, i0) and s(c1, i1) > s(c0, i1)
    image = s(c0, i0) > s(c0, i1) and s(c1, i1) > s(c1, i0)
    group = text and image
  `winoground/{text,image,group}`: the fractions of examples (chance 1/4, 1/4, 1/6).
* ARO (Yuksekgonul et al., 2023), per case (image cropped to the box, true and false caption):
  right = s(true) > s(false) (ARO's argmax over [false, true] picks false on a tie).
  `aro_<subset>/acc`: the fraction of cases; `aro_<subset>/macro_acc`: what the paper reports, the mean
  of per-group accuracies as ARO's notebook computes it: VG-Relation per relation, leaving out the
  relations it lists as symmetric (`SYMMETRIC_RELATIONS`); VG-Attribution per attribute pair
  ("<a0>_<a1>") with at least 25 cases. Absent when no group qualifies.
* SugarCrepe (Hsieh et al., 2023), per case: s(caption) > s(negative_caption);
  `sugarcrepe/<category>_acc` per category file and `sugarcrepe/mean_acc` over the seven categories.

Every set also reports `<set>/num_examples` (examples / cases scored). `max_images` takes the first N
examples of each file (a Winoground example holds two images). A null `root` is the default: the
protocol is listed as not run ("not configured"); a missing file names itself and the expected layout.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmbench.data.errors import DataError
from mmbench.data.hf.images import square_image
from mmbench.data.release.layouts import json_lines, load_json
from mmbench.metrics.common import Inputs, Unavailable, chunks, encode_texts, eval_mode, pair_scorer

WINOGROUND_LAYOUT = (
    "<root>/examples.jsonl (one example per line: id, image_0, image_1, caption_0, caption_1, tag, ...) and "
    "<root>/images/<image_0>.png: the data/ folder of the facebook/winoground dataset repo with images.zip unzipped"
)
ARO_LAYOUT = (
    "<root>/visual_genome_relation.json and <root>/visual_genome_attribution.json (lists of cases: image_path, "
    "bbox_x, bbox_y, bbox_w, bbox_h, true_caption, false_caption, relation_name / attributes) and "
    "<root>/images/<image_path>: ARO's root_dir (github.com/mertyg/vision-language-models-are-bows, its "
    "vgr_vga_images.zip unzipped there)"
)
SUGARCREPE_LAYOUT = (
    "<root>/<category>.json for the categories {categories} ({{id: {{filename, caption, negative_caption}}}}: "
    "the data/ folder of github.com/RAIVNLab/sugar-crepe) and <image_root>/<filename>: COCO val2017 images"
)
SUGARCREPE_CATEGORIES = ("add_obj", "add_att", "replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att")

# The relations ARO's notebook ("Replicate ARO! VG-Relation, VG-Attribution.ipynb") leaves out of the
# VG-Relation macro accuracy (relations whose swapped caption may still be true, e.g. "next to").
# fmt: off
SYMMETRIC_RELATIONS = frozenset(
    (
        "adjusting", "attached to", "between", "bigger than", "biting", "boarding", "brushing", "chewing",
        "cleaning", "climbing", "close to", "coming from", "coming out of", "contain", "crossing", "dragging",
        "draped over", "drinking", "drinking from", "driving", "driving down", "driving on", "eating from",
        "eating in", "enclosing", "exiting", "facing", "filled with", "floating in", "floating on", "flying",
        "flying above", "flying in", "flying over", "flying through", "full of", "going down", "going into",
        "going through", "grazing in", "growing in", "growing on", "guiding", "hanging from", "hanging in",
        "hanging off", "hanging over", "higher than", "holding onto", "hugging", "in between", "jumping off",
        "jumping on", "jumping over", "kept in", "larger than", "leading", "leaning over", "leaving", "licking",
        "longer than", "looking in", "looking into", "looking out", "looking over", "looking through",
        "lying next to", "lying on top of", "making", "mixed with", "mounted on", "moving", "on the back of",
        "on the edge of", "on the front of", "on the other side of", "opening", "painted on", "parked at",
        "parked beside", "parked by", "parked in", "parked in front of", "parked near", "parked next to",
        "perched on", "petting", "piled on", "playing", "playing in", "playing on", "playing with", "pouring",
        "reaching for", "reading", "reflected on", "riding on", "running in", "running on", "running through",
        "seen through", "sitting behind", "sitting beside", "sitting by", "sitting in front of", "sitting near",
        "sitting next to", "sitting under", "skiing down", "skiing on", "sleeping in", "sleeping on",
        "smiling at", "sniffing", "splashing", "sprinkled on", "stacked on", "standing against",
        "standing around", "standing behind", "standing beside", "standing in front of", "standing near",
        "standing next to", "staring at", "stuck in", "surrounding", "swimming in", "swinging", "talking to",
        "topped with", "touching", "traveling down", "traveling on", "tying", "typing on", "underneath",
        "wading in", "waiting for", "walking across", "walking by", "walking down", "walking next to",
        "walking through", "working in", "working on", "worn on", "wrapped around", "wrapped in", "by", "of",
        "near", "next to", "with", "beside", "on the side of", "around",
    )
)
# fmt: on


@dataclass(frozen=True)
class AroSubset:
    """One ARO subset: its file, the group of a case for the macro accuracy and which groups count."""

    file: str
    group: Callable[[dict], str]  # case -> its group (relation, attribute pair)
    min_count: int  # groups with fewer cases are left out of the macro accuracy
    excluded: frozenset[str]  # groups left out of the macro accuracy


ARO_SUBSETS = {
    "relation": AroSubset("visual_genome_relation.json", lambda case: case["relation_name"], 1, SYMMETRIC_RELATIONS),
    "attribution": AroSubset(
        "visual_genome_attribution.json",
        lambda case: f"{case['attributes'][0]}_{case['attributes'][1]}",
        25,
        frozenset(),
    ),
}
ARO_KEYS = ("image_path", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "true_caption", "false_caption")
WINOGROUND_KEYS = ("image_0", "image_1", "caption_0", "caption_1")
SUGARCREPE_KEYS = ("filename", "caption", "negative_caption")
READERS = min(4, os.cpu_count() or 1)  # threads decoding a chunk's images (PIL releases the GIL)


# --------------------------------------------------------------------------- scoring rules


def winoground_scores(s: torch.Tensor) -> dict[str, float]:
    """s (N, 2, 2), s[n, c, i] = score of caption c with image i of example n -> fractions of examples
    won by the text, image and group rules (Thrush et al., 2022); ties are not wins."""
    text = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])  # each image prefers its own caption
    image = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])  # each caption prefers its own image
    group = text & image
    return {
        "text": text.double().mean().item(),
        "image": image.double().mean().item(),
        "group": group.double().mean().item(),
    }


def macro_accuracy(
    right: Sequence[bool], groups: Sequence[str], *, min_count: int = 1, excluded: frozenset[str] = frozenset()
) -> float | None:
    """Mean over groups of each group's accuracy, for groups with at least `min_count` cases and not in
    `excluded`; None when no group qualifies."""
    wins: defaultdict[str, int] = defaultdict(int)
    counts: defaultdict[str, int] = defaultdict(int)
    for ok, g in zip(right, groups, strict=True):
        wins[g] += int(ok)
        counts[g] += 1
    kept = [wins[g] / counts[g] for g in counts if counts[g] >= min_count and g not in excluded]
    return float(np.mean(kept)) if kept else None


# --------------------------------------------------------------------------- images and pair scores


@dataclass(frozen=True)
class ImageRef:
    """An image of a set: a file, optionally cropped to a pixel box (x, y, w, h) before anything else (ARO)."""

    path: Path
    box: tuple[float, float, float, float] | None = None


def read_image(ref: ImageRef, size: int) -> np.ndarray:
    """(size, size, 3) uint8: decoded as RGB, cropped to the box as ARO's loader crops (PIL, (x, y, x + w,
    y + h); area outside the image is black), then `square_image` (short side to `size`, centre crop)."""
    from PIL import Image

    with Image.open(ref.path) as im:
        image = im.convert("RGB")
    if ref.box is not None:
        x, y, w, h = ref.box
        image = image.crop((x, y, x + w, y + h))
    return square_image(image, size)


@torch.no_grad()
def score_pairs(module, inputs: Inputs, pairs: Sequence[tuple[ImageRef, str]], *, batch_size: int) -> torch.Tensor:
    """s(text, image) (P,) of every (image, text) pair by the model's pair scorer, in order.

    Distinct images are visited in chunks of `batch_size`, each decoded and encoded once; the distinct
    texts paired with a chunk's images are encoded once per chunk; pairs are scored `batch_size` at a time.
    """
    scorer, model = pair_scorer(module), module.model
    if scorer is None:
        raise Unavailable("needs an objective that scores image-text pairs: itc or itm")
    size = int(inputs.dataset.image_size)
    images = list(dict.fromkeys(ref for ref, _ in pairs))  # distinct, in first-use order
    slot = {ref: k for k, ref in enumerate(images)}
    pairs_of = defaultdict(list)  # image slot -> its pair indices
    for p, (ref, _) in enumerate(pairs):
        pairs_of[slot[ref]].append(p)
    out = torch.empty(len(pairs))
    with eval_mode(module), ThreadPoolExecutor(READERS) as pool:
        for s in chunks(len(images), batch_size):
            pixels = pool.map(lambda ref: read_image(ref, size), images[s])
            items = [{"image": a, "image_id": -1 - k} for k, a in enumerate(pixels, s.start)]
            image = model.encode_image(inputs.image_items(items))  # (B_img, ...) this chunk's images
            chunk_pairs = [p for k in range(s.start, s.stop) for p in pairs_of[k]]
            texts = list(dict.fromkeys(pairs[p][1] for p in chunk_pairs))
            text = encode_texts(model, inputs, texts, batch_size)  # (B_txt, ...) distinct texts, once
            row = {t: j for j, t in enumerate(texts)}
            for q in chunks(len(chunk_pairs), batch_size):
                batch = chunk_pairs[q]
                img_idx = torch.tensor([slot[pairs[p][0]] - s.start for p in batch], device=inputs.device)
                txt_idx = torch.tensor([row[pairs[p][1]] for p in batch], device=inputs.device)
                out[batch] = scorer.pair_score(model, text.index(txt_idx), image.index(img_idx)).float().cpu()
    return out


# --------------------------------------------------------------------------- release files


def _check_model(module, name: str) -> None:
    if pair_scorer(module) is None:
        raise Unavailable(f"{name} needs an objective that scores image-text pairs: itc or itm")
    if getattr(module.model.vision_encoder, "needs_regions", False):
        raise Unavailable(
            f"{name} builds images from files and has no object regions (boxes / region features), which this "
            f"model's vision encoder ({type(module.model.vision_encoder).__name__}) reads"
        )


def _root(root: str | None, name: str, layout: str, holds: str, key: str = "root") -> Path:
    """The folder `eval.<name>.<key>`; null (the default) -> not run, listed as "not configured"."""
    if root is None:
        raise Unavailable(f"not configured: set eval.{name}.{key} to a folder holding {holds}")
    path = Path(os.path.expanduser(str(root)))
    if not path.is_dir():
        raise Unavailable(f"{name}: eval.{name}.{key}={path} is not a folder; expected {layout}")
    return path


def _read_json(path: Path, layout: str, kind: type, lines: bool = False):
    """The records of a release file: a JSON `kind` (list or dict), or JSON lines (a list)."""
    if not path.is_file():
        raise Unavailable(f"{path} not found; expected {layout}")
    try:  # the release readers' parsing: a bad document or line is named with its line number
        data = [record for _, record in json_lines(path)] if lines else load_json(path)
    except DataError as err:
        raise Unavailable(f"{err}; expected {layout}") from err
    if not isinstance(data, kind):
        raise Unavailable(f"{path} holds a JSON {type(data).__name__}, not a {kind.__name__}; expected {layout}")
    return data


def _check_keys(records: Sequence[dict], keys: Sequence[str], path: Path, layout: str) -> None:
    if not records:
        raise Unavailable(f"{path} holds no examples (or max_images is 0); expected {layout}")
    for i, rec in enumerate(records):
        missing = [k for k in keys if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise Unavailable(f"{path}: record {i} has no {missing}; expected {layout}")


def _check_images(refs, layout: str) -> None:
    paths = list(dict.fromkeys(ref.path for ref in refs))
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise Unavailable(f"{len(missing)} of {len(paths)} images not found, e.g. {missing[0]}; expected {layout}")


# --------------------------------------------------------------------------- protocols


def winoground(
    module, inputs: Inputs, *, batch_size: int, max_images: int | None, root: str | None
) -> dict[str, float]:
    """Winoground text / image / group scores of the examples in `root` (first `max_images` examples)."""
    folder = _root(root, "winoground", WINOGROUND_LAYOUT, "examples.jsonl and images/ (Winoground's data/)")
    _check_model(module, "winoground")
    path = folder / "examples.jsonl"
    examples = _read_json(path, WINOGROUND_LAYOUT, list, lines=True)[:max_images]
    _check_keys(examples, WINOGROUND_KEYS, path, WINOGROUND_LAYOUT)
    images = [[ImageRef(folder / "images" / f"{ex[f'image_{i}']}.png") for i in (0, 1)] for ex in examples]
    _check_images([ref for pair in images for ref in pair], WINOGROUND_LAYOUT)
    pairs = [(images[n][i], ex[f"caption_{c}"]) for n, ex in enumerate(examples) for c in (0, 1) for i in (0, 1)]
    s = score_pairs(module, inputs, pairs, batch_size=batch_size).view(len(examples), 2, 2)  # [n, caption, image]
    out = {f"winoground/{k}": v for k, v in winoground_scores(s).items()}
    return {**out, "winoground/num_examples": float(len(examples))}


def aro(
    module, inputs: Inputs, *, batch_size: int, max_images: int | None, root: str | None, subset: str
) -> dict[str, float]:
    """ARO VG-Relation or VG-Attribution (`subset`: relation | attribution) accuracy, micro and macro."""
    if subset not in ARO_SUBSETS:
        raise ValueError(f"unknown ARO subset {subset!r}; valid: {sorted(ARO_SUBSETS)}")
    name, spec = f"aro_{subset}", ARO_SUBSETS[subset]
    folder = _root(root, name, ARO_LAYOUT, f"{spec.file} and images/ (ARO's root_dir)")
    _check_model(module, name)
    path = folder / spec.file
    cases = _read_json(path, ARO_LAYOUT, list)[:max_images]
    _check_keys(cases, ARO_KEYS, path, ARO_LAYOUT)
    try:
        groups = [spec.group(case) for case in cases]
    except (KeyError, IndexError, TypeError) as err:
        raise Unavailable(f"{path}: a case has no {subset} group ({err!r}); expected {ARO_LAYOUT}") from err
    refs = [
        ImageRef(folder / "images" / c["image_path"], (c["bbox_x"], c["bbox_y"], c["bbox_w"], c["bbox_h"]))
        for c in cases
    ]
    _check_images(refs, ARO_LAYOUT)
    pairs = [(ref, c[key]) for ref, c in zip(refs, cases) for key in ("true_caption", "false_caption")]
    s = score_pairs(module, inputs, pairs, batch_size=batch_size).view(len(cases), 2)  # [case, (true, false)]
    right = (s[:, 0] > s[:, 1]).tolist()
    out = {f"{name}/acc": float(np.mean(right)), f"{name}/num_examples": float(len(cases))}
    macro = macro_accuracy(right, groups, min_count=spec.min_count, excluded=spec.excluded)
    if macro is not None:
        out[f"{name}/macro_acc"] = macro
    return out


def sugarcrepe(
    module, inputs: Inputs, *, batch_size: int, max_images: int | None, root: str | None, image_root: str | None
) -> dict[str, float]:
    """SugarCrepe accuracy per category (first `max_images` cases of each) and their mean."""
    layout = SUGARCREPE_LAYOUT.format(categories=", ".join(SUGARCREPE_CATEGORIES))
    folder = _root(root, "sugarcrepe", layout, "add_obj.json ... swap_att.json (SugarCrepe's data/)")
    images = _root(image_root, "sugarcrepe", layout, "the COCO val2017 images", key="image_root")
    _check_model(module, "sugarcrepe")
    missing = [f"{c}.json" for c in SUGARCREPE_CATEGORIES if not (folder / f"{c}.json").is_file()]
    if missing:
        raise Unavailable(f"{folder} has no {missing}; expected {layout}")
    cases = {}
    for category in SUGARCREPE_CATEGORIES:
        path = folder / f"{category}.json"
        records = list(_read_json(path, layout, dict).values())[:max_images]
        _check_keys(records, SUGARCREPE_KEYS, path, layout)
        cases[category] = records
    refs = {c: [ImageRef(images / r["filename"]) for r in records] for c, records in cases.items()}
    _check_images([ref for rs in refs.values() for ref in rs], layout)
    pairs = [
        (ref, r[key])
        for c, records in cases.items()
        for ref, r in zip(refs[c], records)
        for key in ("caption", "negative_caption")
    ]
    s = score_pairs(module, inputs, pairs, batch_size=batch_size).view(-1, 2)  # [case, (positive, negative)]
    right = s[:, 0] > s[:, 1]
    out, start = {}, 0
    for category, records in cases.items():
        part = right[start : start + len(records)]
        start += len(records)
        out[f"sugarcrepe/{category}_acc"] = part.double().mean().item()
    out["sugarcrepe/mean_acc"] = float(np.mean(list(out.values())))
    return {**out, "sugarcrepe/num_examples": float(len(right))}
