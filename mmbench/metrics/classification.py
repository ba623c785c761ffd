"""Classification accuracy (NLVR2, SNLI-VE, Hateful Memes) and, for two classes, AUROC (Hateful Memes).

Every (image, text) example of the split is classified once by the run's classification head: the
classify objective (`Classify.class_logits`: its head on the fused pooled vector) or, for two-image
examples, the NLVR2 pair head (`NLVR2.class_logits`: the text fused with the left and the right image, the
two pooled vectors concatenated), each the code path of its training loss. Each image is encoded once
(the right image of a pair too) and its features repeated for its texts (`example_batches`, as
`vqa.question_batches` does for questions). The label of example (image r, text k) is the data column
behind the head's label field (`caption_labels[r][k]` for the batch field `labels`); -1 (unknown, e.g. an
unlabelled test split) is skipped.

Names (torchmetrics.functional computes both scores), one family whichever head scores:

* `classification/acc`: `multiclass_accuracy(average="micro")` of the argmax, i.e. the share of
  labelled examples classified right (NLVR2: the accuracy papers report on dev = `eval.split=val` and
  test-P = the test split);
* `classification/auroc`, for a two-class head: `binary_auroc` of the positive-class probability
  softmax(logits)[:, 1] (class 1 positive: Hateful Memes' label 1 = hateful, NLVR2's 1 = True). Absent when
  the scored examples hold one class only (the ROC curve is then undefined);
* `classification/num_examples`: the labelled examples scored.

A run with both heads (classify and nlvr2) is scored by the one that reads more images (the pair head: on
two-image data it is the task's classifier; classify sees the left image only), and the log says so.
"""

from __future__ import annotations

import logging

import torch
from torchmetrics.functional.classification import binary_auroc, multiclass_accuracy

from mmbench.data.columns import COLUMNS, FIELDS
from mmbench.metrics.common import ONE_IMAGE, Inputs, Unavailable, column, eval_mode, example_batches

log = logging.getLogger(__name__)


def image_fields(head) -> tuple[str, ...]:
    """The images of one example a classification head reads, in its `class_logits` order."""
    return tuple(getattr(head, "image_fields", ONE_IMAGE))


def classify_objective(module):
    """The objective that classifies (image, text) examples (has `class_logits`), or None; of several, the
    one that reads the most images (the NLVR2 pair head before classify)."""
    heads = [(name, o) for name, o in module.objectives.items() if hasattr(o, "class_logits")]
    if not heads:
        return None
    name, head = max(heads, key=lambda h: len(image_fields(h[1])))
    if len(heads) > 1:
        log.info("classification: scored by objective '%s' of %s", name, [n for n, _ in heads])
    return head


def label_column(field: str) -> str | None:
    """The data column (one value per caption) the batch field `field` is made from, or None."""
    made_from = FIELDS[field].columns if field in FIELDS else ()
    if len(made_from) == 1 and COLUMNS[made_from[0]].per == "caption":
        return made_from[0]
    return None


def classification_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy (and, for two classes, AUROC) of logits (N, L) against labels (N,), -1 = unknown (skipped).

    Raises `Unavailable` when no example is labelled.
    """
    N, L = logits.shape
    labels = labels.long()
    keep = labels >= 0
    if not keep.any():
        raise Unavailable(f"every one of the {N} examples has label -1 (unknown); evaluate a labelled split")
    if int(labels.max()) >= L:
        raise ValueError(
            f"label {int(labels.max())} but the classify head has {L} classes; set objective.classify.num_labels "
            f"to the dataset's label count"
        )
    logits, labels = logits[keep], labels[keep]  # (n, L), (n,)
    out = {
        "classification/acc": multiclass_accuracy(logits.float(), labels, num_classes=L, average="micro").item(),
        "classification/num_examples": float(len(labels)),
    }
    if L == 2:
        if labels.unique().numel() == 2:
            positive = logits.double().softmax(-1)[:, 1]  # (n,) float64: fewer probabilities saturated to 1
            out["classification/auroc"] = binary_auroc(positive, labels).item()
        else:
            log.info(
                "classification: auroc not computed, the %d labelled examples are all class %d",
                len(labels),
                int(labels[0]),
            )
    return out


def classification(module, inputs: Inputs, *, batch_size: int, max_images: int | None) -> dict[str, float]:
    """Accuracy (and binary AUROC) of the classification head (classify, or NLVR2's pair head) on every
    labelled example of the split of `inputs` (its first `max_images` rows when set)."""
    head = classify_objective(module)
    if head is None:
        raise Unavailable(
            "needs the classify objective (its head on the fused pooled vector) or, for image pairs, nlvr2"
        )
    if head.num_labels < 2:
        raise Unavailable(f"the classify head has {head.num_labels} class; accuracy needs at least 2")
    name = label_column(head.label_field)
    labels = column(inputs.dataset, name) if name else None
    if labels is None:
        raise Unavailable(
            f"the data has no per-caption label column for the batch field '{head.label_field}' "
            f"(`caption_labels`: data.source.columns.label)"
        )
    fields = image_fields(head)
    if "pixel_values_right" in fields and getattr(inputs.dataset, "images_right", None) is None:
        raise Unavailable("the head classifies image pairs, but the data has no right image (column pixels_right)")
    captions = inputs.dataset.captions
    n = len(captions) if max_images is None else min(max_images, len(captions))
    model = module.model
    logits: list[torch.Tensor] = []
    targets: list[int] = []
    with eval_mode(module):
        for pairs, ids, mask, images in example_batches(model, inputs, captions, n, batch_size, fields):
            text = model.encode_text(ids, mask)
            logits.append(head.class_logits(model, text, *images).cpu())  # (b, L)
            targets += [labels[r][k] for r, k in pairs]
    if not logits:
        raise Unavailable(f"the first {n} images of the split have no texts to classify")
    return classification_scores(torch.cat(logits), torch.tensor(targets))
