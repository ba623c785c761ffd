"""The batch schema (`mmbench.data.columns`): collated batches, the sources' Arrow types and their declared
fields all agree with it."""

from __future__ import annotations

import json
from functools import partial

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from mmbench.data import columns as schema
from mmbench.data import hf, shapes
from mmbench.data.batch import Batch
from mmbench.data.datamodule import VLDataModule

SMALL = dict(num_train=60, num_val=20, num_test=20)


def check_against_schema(batch: dict[str, torch.Tensor], declared: frozenset[str]) -> None:
    """Keys are the declared fields; each tensor has its field's dtype and number of dims."""
    assert set(batch) == set(declared)
    for name, tensor in batch.items():
        field = schema.FIELDS[name]
        assert tensor.dtype == field.dtype, name
        assert tensor.dim() == len(field.shape), name
        assert tensor.shape[0] == batch["image_id"].shape[0], name


def test_the_batch_type_names_every_field_and_only_those():
    """`Batch` (the type mypy checks every `batch[...]` against) and `FIELDS` (what the collator makes) list
    the same tensors: a field added to one and not the other fails here."""
    assert list(Batch.__annotations__) == list(schema.FIELDS)
    assert Batch.__required_keys__ == frozenset()  # which fields a batch has follows from its data


def shapes_module(tmp_path, **settings) -> VLDataModule:
    dm = VLDataModule(partial(shapes.build_shapes, tmp_path, image_size=48, **settings), image_size=48, vocab_size=200)
    dm.setup()
    return dm


@pytest.mark.parametrize("questions_per_image", [4, 0])
def test_shapes_batch_follows_the_schema_and_its_padding(tmp_path, questions_per_image):
    dm = shapes_module(tmp_path, questions_per_image=questions_per_image, **SMALL)
    ds = dm.datasets["train"]
    items = [ds[i] for i in range(0, 4 * 12, 4)]  # one caption of each of 12 images
    batch = dm.collate(items)
    check_against_schema(batch, shapes.provided_fields(questions_per_image=questions_per_image, **SMALL))

    B, R = len(items), batch["region_boxes"].shape[1]
    assert R == max(len(it["boxes"]) for it in items)
    for i, it in enumerate(items):  # positions past an image's objects / facts hold the field's padding value
        n = len(it["boxes"])
        assert batch["region_mask"][i, :n].all() and not batch["region_mask"][i, n:].any()
        assert (batch["region_boxes"][i, n:] == schema.FIELDS["region_boxes"].pad).all()
        assert (batch["region_labels"][i, n:] == schema.FIELDS["region_labels"].pad).all()
        assert (batch["region_labels"][i, :n] >= 0).all()
        f = len(it["facts"])
        assert (batch["image_facts"][i, f:] == schema.FIELDS["image_facts"].pad).all() and batch["image_facts"][
            i, :f
        ].all()
    assert batch["pixel_values"].shape == (B, 3, 48, 48)
    assert ((batch["attention_mask"] == 0) == (batch["input_ids"] == dm.info.pad_id)).all()
    # each caption's word-order negative: tokenised with the captions (same T), its tokens theirs reordered
    assert batch["negative_ids"].shape == batch["input_ids"].shape
    assert batch["has_negative"].tolist() == [bool(it["negative"]) for it in items] and batch["has_negative"].any()
    for i in batch["has_negative"].nonzero().squeeze(1).tolist():
        assert torch.equal(batch["negative_mask"][i], batch["attention_mask"][i])
        assert not torch.equal(batch["negative_ids"][i], batch["input_ids"][i])
        assert torch.equal(batch["negative_ids"][i].sort().values, batch["input_ids"][i].sort().values)
    if questions_per_image:
        assert batch["answer_scores"].shape == (B, dm.info.num_answers)
        assert torch.equal(batch["answer_scores"].sum(1), (batch["answer"] >= 0).float())  # one-hot, 0 = unknown


def test_shapes_features_are_the_schema_types(tmp_path):
    """Shapes writes the schema's columns with its types; only its two legacy narrower types differ."""
    canonical = schema.features(shapes.FEATURES)
    differ = {k for k in shapes.FEATURES if shapes.FEATURES[k] != canonical[k]}
    assert differ == {"boxes", "labels"}
    dsd, _ = shapes.build_shapes(tmp_path, image_size=48, **SMALL)
    assert dsd["train"].features == shapes.FEATURES


def _jsonl_with_everything(root) -> str:
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(root / f"{i}.png")
        n = 1 + i % 3
        rows.append(
            {
                "file": f"{i}.png",
                "text": f"picture {i}",
                "question": f"what is {i % 4}?",
                "answers": [str(i % 3), str(i % 2), str(i % 3)],
                "label": ["cat", "dog", "bird"][i % 3],
                "feats": rng.random((n, 4)).tolist(),
                "boxes": [[0.1, 0.1, 0.5, 0.5]] * n,
                "objects": list(range(n)),
            }
        )
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root / "data.jsonl")


def test_hf_batch_follows_the_schema_and_its_declared_fields(tmp_path):
    columns = {
        "image": "file",
        "text": "text",
        "question": "question",
        "answers": "answers",
        "label": "label",
        "region_feats": "feats",
        "boxes": "boxes",
        "region_labels": "objects",
    }
    source = partial(
        hf.build_hf,
        tmp_path / "cache",
        path=_jsonl_with_everything(tmp_path / "data"),
        image_size=16,
        columns=columns,
        splits={"train": "train", "val": None, "test": None},
        val_fraction=0.2,
        test_fraction=0.2,
    )
    dm = VLDataModule(source, image_size=16, vocab_size=100)
    dm.setup()
    ds = dm.datasets["train"]
    batch = dm.collate([ds[i] for i in range(len(ds))])
    check_against_schema(batch, hf.provided_fields(columns=columns))
    scores = batch["answer_scores"]
    assert ((scores == 0) | (scores == 1 / 3) | (scores == 2 / 3) | (scores == 1)).all()  # VQAv2 soft scores
    assert (batch["region_feats"][~batch["region_mask"]] == schema.FIELDS["region_feats"].pad).all()
    train = dm._load()[0]["train"]
    assert train.features == hf.canonical_features(train[0])  # the converter wrote the schema's types


def test_every_field_is_made_from_known_columns():
    for field in schema.FIELDS.values():
        assert field.columns and set(field.columns) <= set(schema.COLUMNS), field.name
    assert {f for f in schema.FIELDS if schema.FIELDS[f].pad is not None} >= {"region_mask", "region_labels"}
    assert schema.padded("region_labels", 2, 3).eq(-1).all() and schema.padded("region_mask", 1, 1).dtype == torch.bool
    with pytest.raises(ValueError, match="region_feat_dim"):
        schema.features(["region_feats"])
    assert isinstance(schema.features(["region_feats"], region_feat_dim=8)["region_feats"], datasets.Array2D)


def test_fields_the_encoders_and_objectives_read_are_schema_fields():
    """`batch_fields` / `fields_read` of every objective and vision encoder config name fields of the schema."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from tests.conftest import ROOT

    for group in ("objective", "encoder/vision"):
        for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
            node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            node = node.get(path.stem, node) if "_target_" not in node else node  # objectives nest under their name
            cls = get_class(node["_target_"])
            plain = {k: v for k, v in node.items() if not k.startswith("_") and not str(v).startswith("${")}
            read = cls.fields_read(**plain) if hasattr(cls, "fields_read") else getattr(cls, "batch_fields", ())
            assert set(read) <= set(schema.FIELDS), f"{path.name}: {sorted(set(read) - set(schema.FIELDS))}"


class _Tokens:
    def __init__(self, text: str):
        self.ids, self.attention_mask = [len(w) for w in text.split()] + [0], [1] * (len(text.split()) + 1)


class _WordLengths:
    """A stand-in tokenizer: one id per word (its length), padded by the longest text."""

    def encode_batch(self, texts):
        enc = [_Tokens(t) for t in texts]
        width = max(len(e.ids) for e in enc)
        for e in enc:
            e.attention_mask += [0] * (width - len(e.ids))
            e.ids += [0] * (width - len(e.ids))
        return enc


def test_a_new_per_caption_column_is_one_entry_in_the_schema(monkeypatch):
    """A column added to `COLUMNS` with a `Field` made from it reaches the batch with no other code."""
    from mmbench.data.collate import Collator
    from mmbench.data.dataset import PairDataset

    monkeypatch.setitem(
        schema.COLUMNS,
        "caption_difficulty",
        schema.Column("caption_difficulty", datasets.List(datasets.Value("float32")), "difficulty", "test", "caption"),
    )
    monkeypatch.setitem(
        schema.FIELDS,
        "difficulty",
        schema.Field("difficulty", torch.float32, ("B",), None, ("caption_difficulty",), "test"),
    )
    names = ["image_id", "pixels", "image_size", "captions", "caption_difficulty"]
    split = datasets.Dataset.from_dict(
        {
            "image_id": [0, 1],
            "pixels": [bytes(4 * 4 * 3), bytes(range(48))],
            "image_size": [4, 4],
            "captions": [["a b", "c"], ["d e f"]],
            "caption_difficulty": [[0.5, 1.5], [2.5]],
        },
        features=schema.features(names),
    )
    ds = PairDataset(split, answer_index={})
    batch = Collator(_WordLengths(), num_answers=0)([ds[i] for i in range(len(ds))])
    assert torch.equal(batch["difficulty"], torch.tensor([0.5, 1.5, 2.5]))
    assert "difficulty" in schema.fields_from(names)
