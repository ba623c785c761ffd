"""The `classification` protocol: accuracy and binary AUROC worked out by hand, labels -1 skipped, the split
scored through the classify objective's own head (each image encoded once), the protocols that cannot run
(no classify objective, no labels: Shapes) and a tiny classify run on local labelled data.

Local data (tests/test_hf_data.py's imagefolder): 24 train and 8 test images of 2 captions each, image i
labelled i % 2 (test images 24..31). `labelled_data` makes test image 26 (class 0) unknown (label null ->
-1), so the test split holds 7 labelled images: 3 of class 0 and 4 of class 1, i.e. 14 labelled examples.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mmbench.builder import build_datamodule, build_module
from mmbench.data.dataset import PairDataset
from mmbench.metrics.classification import classification_scores
from mmbench.metrics.common import Inputs, Unavailable
from mmbench.metrics.suite import evaluate_suite, protocol
from mmbench.objectives.context import StepContext
from mmbench.pipeline import run
from tests.conftest import compose_cfg
from tests.test_hf_data import TINY_HF, make_imagefolder

UNKNOWN = (26,)  # test images whose label is made null (-1)
LABELLED_EXAMPLES, CLASS_1_EXAMPLES = 14, 8  # 7 labelled test images x 2 captions; images 25, 27, 29, 31


def logits_of(p1: list[float]) -> torch.Tensor:
    """(N, 2) logits whose softmax gives class 1 the probabilities p1: [0, log(p / (1 - p))]."""
    p = torch.tensor(p1, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)


def hand_auroc(scores: list[float], labels: list[int]) -> float:
    """Mann-Whitney: the share of (positive, negative) pairs with the positive scored higher, ties 1/2."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# --------------------------------------------------------------------------- scores, by hand


def test_binary_accuracy_and_auroc_known_answer():
    # class-1 probabilities 0.1, 0.4, 0.35, 0.8 for labels 0, 0, 1, 1: of the 4 (positive, negative)
    # pairs, 0.35 beats 0.1 but not 0.4, 0.8 beats both -> AUROC 3/4; argmax (p > 0.5) = 0, 0, 0, 1 -> acc 3/4
    out = classification_scores(logits_of([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    assert out == pytest.approx(
        {"classification/acc": 0.75, "classification/auroc": 0.75, "classification/num_examples": 4.0}
    )
    # a tie between a positive and a negative counts half: 0.6 vs 0.6 -> (1 + 0.5 + 1 + 1) / 4
    out = classification_scores(logits_of([0.2, 0.6, 0.6, 0.9]), torch.tensor([0, 0, 1, 1]))
    assert out["classification/auroc"] == pytest.approx(0.875)
    assert out["classification/acc"] == pytest.approx(0.75)  # predicted 0, 1, 1, 1
    # a perfect ranking with every prediction class 0 (p < 0.5): AUROC 1, accuracy 1/2
    out = classification_scores(logits_of([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, 0, 1, 1]))
    assert out["classification/auroc"] == 1.0 and out["classification/acc"] == 0.5


def test_scores_equal_the_hand_computation_on_random_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(60, 2, generator=g).round(decimals=1)  # coarse values: tied scores occur
    labels = torch.randint(0, 2, (60,), generator=g)
    out = classification_scores(logits, labels)
    p1 = logits.double().softmax(-1)[:, 1].tolist()
    assert out["classification/auroc"] == pytest.approx(hand_auroc(p1, labels.tolist()), abs=1e-6)
    right = sum(int(row.argmax()) == y for row, y in zip(logits, labels.tolist()))
    assert out["classification/acc"] == pytest.approx(right / 60)
    # three classes: accuracy only, no AUROC
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 2.0], [1.0, 0.0, 0.5], [0.0, 2.0, 1.0]])
    out = classification_scores(logits, torch.tensor([0, 1, 1, 2, 1]))  # predicted 0, 1, 2, 0, 1: 3 right
    assert out == pytest.approx({"classification/acc": 0.6, "classification/num_examples": 5.0})


def test_unknown_labels_are_skipped_and_not_counted():
    logits = logits_of([0.1, 0.9, 0.4, 0.2, 0.35, 0.05, 0.8])
    labels = torch.tensor([0, -1, 0, -1, 1, -1, 1])  # the -1 rows would each be wrong if they were scored
    out = classification_scores(logits, labels)
    assert out == classification_scores(logits_of([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    assert out["classification/num_examples"] == 4.0 and out["classification/auroc"] == 0.75
    with pytest.raises(Unavailable, match="every one of the 3 examples has label -1"):
        classification_scores(logits_of([0.1, 0.5, 0.9]), torch.tensor([-1, -1, -1]))


def test_one_class_has_no_auroc_and_labels_beyond_the_head_are_refused():
    out = classification_scores(logits_of([0.1, 0.7]), torch.tensor([1, 1]))  # no negative: ROC undefined
    assert out == {"classification/acc": 0.5, "classification/num_examples": 2.0}
    with pytest.raises(ValueError, match="label 2 but the classify head has 2 classes.*num_labels"):
        classification_scores(logits_of([0.1, 0.7]), torch.tensor([0, 2]))


# --------------------------------------------------------------------------- the protocol on a tiny real module

LABEL = ["data.source.columns.text=captions", "data.source.columns.label=label"]


def hf_cfg(tmp_path: Path, *extra: str):
    """test_hf_data's tiny model and run on local data, with no ITC setting (these runs have no ITC)."""
    tiny = [o for o in TINY_HF if not o.startswith("objective.itc.")]
    return compose_cfg(["data=hf", *tiny, *extra], tmp_path / "run")


def labelled_data(root: Path) -> Path:
    data = make_imagefolder(root)
    meta = root / "test" / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    for row in rows:
        if int(row["file_name"][:3]) in UNKNOWN:
            row["label"] = None
    meta.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


@pytest.fixture
def classifier(tmp_path, cache_dir):
    """A tiny ViLT with the classify objective, and the datamodule of the labelled local data."""
    cfg = hf_cfg(tmp_path, f"data.source.path={labelled_data(tmp_path / 'data')}", *LABEL, "objective=[classify]")
    dm = build_datamodule(cfg)
    return build_module(cfg, dm.info).eval(), dm


def test_known_answer_with_a_constant_head(classifier):
    """Head weight 0, bias (0, 1): every example is predicted class 1, with the same probability."""
    module, dm = classifier
    head = module.objectives["classify"]
    torch.nn.init.zeros_(head.head.weight)
    with torch.no_grad():
        head.head.bias.copy_(torch.tensor([0.0, 1.0]))
    inputs = Inputs(dm.datasets["test"], dm.tokenizer)
    out = protocol("classification")(module, inputs, batch_size=4)
    assert out == pytest.approx(
        {
            "classification/acc": CLASS_1_EXAMPLES / LABELLED_EXAMPLES,  # 8 / 14
            "classification/auroc": 0.5,  # every pair tied
            "classification/num_examples": float(LABELLED_EXAMPLES),
        }
    )
    # the first 3 images (24: 0, 25: 1, 26: unknown): 4 labelled examples, 2 of class 1
    out = protocol("classification", max_images=3)(module, Inputs(dm.datasets["test"], dm.tokenizer), batch_size=4)
    assert out["classification/num_examples"] == 4.0 and out["classification/acc"] == 0.5


def test_the_split_is_scored_through_the_objectives_own_head_each_image_once(classifier, monkeypatch):
    """The protocol's logits are the training path's: the collated test examples (one batch), the step's
    encoders and `Classify.forward`, whose `acc` equals the protocol's accuracy; images are encoded once each.
    The two captions of an image get different labels here, so a text paired with its image's other label
    would show."""
    module, dm = classifier
    model, head = module.model, module.objectives["classify"]
    split = dm.datasets["test"].split
    per_caption = [[j % 2, (j + 1) % 2] for j in range(len(split))]
    per_caption[2] = [-1, 1]  # one unknown caption
    split = split.remove_columns("caption_labels").add_column(
        "caption_labels", per_caption, feature=split.features["caption_labels"]
    )
    test = PairDataset(split, answer_index={})
    batch = dm.collate([test[i] for i in range(len(test))])
    assert len(test) == 16 and (batch["labels"] >= 0).sum() == 15
    assert batch["labels"][:6].tolist() == [0, 1, 1, 0, -1, 1]  # example (image r, caption k) in order
    with torch.no_grad():
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        image = model.encode_image(batch)
        step = head(model, batch, text, image, StepContext())
        logits = head.class_logits(model, text, image)  # (16, 2)
    keep = batch["labels"] >= 0
    p1 = logits[keep].double().softmax(-1)[:, 1].tolist()
    expected_auroc = hand_auroc(p1, batch["labels"][keep].tolist())

    encoded = []
    encode_image = model.encode_image
    monkeypatch.setattr(
        model, "encode_image", lambda b, **kw: encoded.append(len(b["pixel_values"])) or encode_image(b, **kw)
    )
    out = protocol("classification")(module, Inputs(test, dm.tokenizer), batch_size=3)
    assert sum(encoded) == 8  # 8 images for 16 (image, text) examples
    assert out["classification/acc"] == pytest.approx(step.metrics["acc"].item(), abs=1e-6)
    assert out["classification/auroc"] == pytest.approx(expected_auroc, abs=1e-5)
    assert 0.0 < expected_auroc < 1.0  # a random head: not a degenerate ranking


def test_not_run_without_labels_or_without_the_classify_objective(classifier, tmp_path):
    module, dm = classifier
    # the same images and captions without the label column: no `caption_labels`
    unlabelled = build_datamodule(hf_cfg(tmp_path / "plain", f"data.source.path={tmp_path / 'data'}", LABEL[0]))
    assert "caption_labels" not in unlabelled.datasets["test"].split.column_names
    with pytest.raises(Unavailable, match="no per-caption label column for the batch field 'labels'.*caption_labels"):
        protocol("classification")(module, Inputs(unlabelled.datasets["test"], unlabelled.tokenizer), batch_size=8)

    del module.objectives["classify"]  # as a run without objective=classify
    metrics, samples = evaluate_suite(module, dm, {"protocols": ["classification"]})
    assert metrics == {} and "needs the classify objective" in samples.unavailable["classification"]


def test_a_shapes_run_without_classify_reports_it_not_run(tiny_cfg):
    """The default protocol list holds `classification`; a Shapes model (no classify objective, no labels)
    gets it listed as not run, and the suite goes on."""
    from mmbench.metrics.suite import with_defaults

    assert "classification" in with_defaults({})["protocols"]
    cfg = tiny_cfg("objective=[itc]")
    dm = build_datamodule(cfg)
    metrics, samples = evaluate_suite(build_module(cfg, dm.info), dm, {"protocols": ["classification", "zeroshot"]})
    assert "test/zeroshot/top1" in metrics and not any("classification" in k for k in metrics)
    assert "needs the classify objective" in samples.unavailable["classification"]


# --------------------------------------------------------------------------- end to end


def test_classify_run_reports_accuracy_and_auroc(tmp_path, cache_dir):
    cfg = hf_cfg(
        tmp_path,
        f"data.source.path={labelled_data(tmp_path / 'data')}",
        *LABEL,
        "objective=[classify]",
        "eval.protocols=[classification,retrieval]",
    )
    record = run(cfg)
    assert record["status"] == "completed", record.get("error")
    metrics = record["metrics"]
    assert metrics["test/classification/num_examples"] == LABELLED_EXAMPLES
    for key in ("test/classification/acc", "test/classification/auroc"):
        assert 0.0 <= metrics[key] <= 1.0 and math.isfinite(metrics[key]), key
    # the accuracy over the labelled examples is a multiple of 1/14
    assert metrics["test/classification/acc"] * LABELLED_EXAMPLES == pytest.approx(
        round(metrics["test/classification/acc"] * LABELLED_EXAMPLES)
    )
    assert not any("/retrieval/" in k for k in metrics)  # no ITC / ITM: not run, and no error
