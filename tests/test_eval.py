"""The evaluation suite on tiny models: protocols follow the objectives, known answers from oracles,
the end-of-training report and `mmbench-eval` through the CLI (same numbers as at the end of
training, robustness included, so evaluation is deterministic; the training run is left untouched)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmbench.builder import build_datamodule, build_module
from mmbench.data.object_classes import object_classes
from mmbench.metrics.common import Inputs, Unavailable, column, encode_images, encode_texts, eval_mode
from mmbench.metrics.presentation import log_to_loggers, write_report
from mmbench.metrics.retrieval import recall_metrics
from mmbench.metrics.suite import Samples, evaluate_suite, protocol
from mmbench.models.outputs import Features
from mmbench.pipeline import run
from tests.conftest import ROOT

# cheap suite settings for unit-level checks
SETTINGS = {
    "batch_size": 64,
    "retrieval": {"rerank_k": 4, "itm_only_max_images": 12},
    "captioning": {"max_images": 4, "max_len": 6},
    "robustness": {
        "max_images": 8,
        "levels": [0.5],
        "metrics": ["retrieval/rmean", "vqa/acc", "zeroshot/top1"],
        "settings": {"retrieval": {"rerank_k": 0}, "diagnostics": {"winoground": False}},
    },
}


def _build(tiny_cfg, *overrides):
    cfg = tiny_cfg(*overrides)
    dm = build_datamodule(cfg)
    return build_module(cfg, dm.info), dm


def _groups(metrics: dict) -> set[str]:
    return {k.split("/")[1] for k in metrics if k.startswith("test/")}


@pytest.mark.parametrize(
    "objectives, expected",
    [
        ("itc,itm,mlm,vqa", {"retrieval", "vqa", "diagnostics", "zeroshot", "robustness"}),
        ("itm,vqa", {"retrieval", "vqa", "diagnostics", "robustness"}),  # no ITC: no zero-shot
        ("itc,lm", {"retrieval", "diagnostics", "zeroshot", "captioning", "robustness"}),
        ("mlm", set()),
    ],
)
def test_protocols_follow_the_objectives(tiny_cfg, objectives, expected):
    # TINY sets objective.itc.*, so ITC is always composed and removed when the case has none
    module, dm = _build(
        tiny_cfg, f"objective=[itc,{objectives}]" if "itc" not in objectives else f"objective=[{objectives}]"
    )
    if "itc" not in objectives:
        del module.objectives["itc"]
    settings = {**SETTINGS, "protocols": ["retrieval", "vqa", "diagnostics", "captioning", "zeroshot", "robustness"]}
    metrics, _ = evaluate_suite(module, dm, settings)
    assert _groups(metrics) == expected
    if "retrieval" in expected:
        itm_only = "itc" not in objectives
        assert metrics["test/retrieval/num_images"] == (
            12 if itm_only else 48
        )  # ITM-only: all pairs, a smaller gallery
        assert ("test/retrieval/itc/rmean" in metrics) == ("itm" in objectives and not itm_only)  # re-ranked
        assert all(0.0 <= metrics[f"test/retrieval/{d}_r{k}"] <= 1.0 for d in ("i2t", "t2i") for k in (1, 5, 10))
    if "captioning" in expected:
        assert {"test/captioning/bleu4", "test/captioning/cider", "test/captioning/exact_match"} <= set(metrics)


def test_a_protocol_of_ones_own_is_a_config_node(tiny_cfg):
    """eval.<name> with a `_target_` is a protocol: validation accepts its name and the suite runs it."""
    from omegaconf import OmegaConf

    from mmbench.validation import _eval_problems

    module, dm = _build(tiny_cfg, "objective=[itc,vqa]")
    node = {"_target_": "mmbench.metrics.vqa.vqa", "_partial_": True, "max_images": 4}
    settings = {**SETTINGS, "few_vqa": node, "protocols": ["few_vqa"]}
    assert _eval_problems(OmegaConf.create({"eval": settings})) == []
    few, _ = evaluate_suite(module, dm, settings)
    inputs = Inputs(dm.datasets["test"], dm.tokenizer, answers=dm.info.answers)
    direct = protocol("vqa", max_images=4)(module, inputs, batch_size=256)
    assert few == {f"test/{k}": v for k, v in direct.items()} and "test/vqa/acc" in few


def test_the_suite_says_which_protocols_did_not_run_and_why(tiny_cfg, caplog, tmp_path):
    """A protocol the model cannot serve (captioning without an LM objective) or the data cannot (zero-shot
    on data that supplies no classes) is named with its reason in the log, in `Samples` and in report.md."""
    module, dm = _build(tiny_cfg, "objective=[itc,vqa]")
    dm.zeroshot_classes = None  # as a dataset without classes
    with caplog.at_level("INFO", logger="mmbench.metrics.suite"):
        metrics, samples = evaluate_suite(module, dm, {**SETTINGS, "protocols": ["vqa", "captioning", "zeroshot"]})
    assert "test/vqa/acc" in metrics and not any(("captioning" in k or "zeroshot" in k) for k in metrics)
    assert set(samples.unavailable) == {"captioning", "zeroshot"}
    assert "lm objective" in samples.unavailable["captioning"]
    assert "data.zeroshot_classes" in samples.unavailable["zeroshot"]
    assert "captioning not run: needs a caption generator" in caplog.text and "vqa not run" not in caplog.text
    report = write_report(tmp_path, metrics, samples=samples).read_text()
    assert "## Protocols not run" in report and "| zeroshot | the data supplies no zero-shot classes" in report


def test_object_classes_of_a_known_split():
    """Classes = every combination of the named attributes' values in the first n rows; labels keep one
    class per object (two red circles are two labels, so that image is not a one-object image)."""
    import datasets

    split = datasets.Dataset.from_dict(
        {
            "obj_color": [["red"], ["red", "red"], ["blue", "red"], ["green"]],
            "obj_shape": [["circle"], ["circle", "circle"], ["square", "circle"], ["star"]],
            "obj_size": [["small"], ["small", "large"], ["large", "small"], ["small"]],
        }
    )
    classes, labels = object_classes(split, ["color", "shape"], 3)  # row 3 (green star) is beyond n
    assert classes == [("blue", "circle"), ("blue", "square"), ("red", "circle"), ("red", "square")]
    assert labels == [[("red", "circle")], [("red", "circle")] * 2, [("blue", "square"), ("red", "circle")]]


def test_zeroshot_names_the_attributes_the_data_has(tiny_cfg):
    """A template field the data's objects do not have is a reason, not an exception or a silent gap."""
    module, dm = _build(tiny_cfg, "objective=[itc]")
    inputs = Inputs(dm.datasets["test"], dm.tokenizer, zeroshot_classes=dm.zeroshot_classes)
    with pytest.raises(
        Unavailable, match=r"attributes are \['color', 'shape', 'size'\]; the template names \['texture'\]"
    ):
        protocol("zeroshot", template="a {texture} {shape}")(module, inputs, batch_size=256)


def test_holdout_split_is_evaluated_beside_the_test_split(tiny_cfg):
    module, dm = _build(
        tiny_cfg, "objective=[itc,itm,vqa]", "data.source.holdout=[[red,circle]]", "+data.source.num_holdout=16"
    )
    metrics, _ = evaluate_suite(module, dm, {**SETTINGS, "protocols": ["vqa", "diagnostics", "zeroshot"]})
    for name in ("vqa/acc", "diagnostics/match_acc", "diagnostics/group_score", "zeroshot/top1"):
        assert f"test/{name}" in metrics and f"test_holdout/{name}" in metrics, name
        assert metrics[f"test/holdout_gap/{name}"] == pytest.approx(
            metrics[f"test/{name}"] - metrics[f"test_holdout/{name}"]
        )


def test_reranking_everything_equals_brute_force_itm(tiny_cfg, monkeypatch):
    """ITC top-k re-ranked by ITM with k >= gallery, and ITM on every pair (no ITC), rank by the same
    scores as a loop that fuses one pair at a time: the ITM head's positive-class logit, as ALBEF's and
    BLIP's evaluation take it (BLIP's rule adds the ITC cosine); recall is computed from them."""
    from mmbench.metrics import retrieval as retrieval_module

    module, dm = _build(tiny_cfg, "objective=[itc,itm]")
    inputs = Inputs(dm.datasets["test"], dm.tokenizer)
    seen, reranked = [], []
    monkeypatch.setattr(
        retrieval_module,
        "recall_metrics",
        lambda i2t, txt2img, t2i=None: seen.append((i2t, t2i)) or recall_metrics(i2t, txt2img, t2i),
    )
    rerank_order = retrieval_module.rerank_order
    monkeypatch.setattr(
        retrieval_module,
        "rerank_order",
        lambda order, itc, itm, rule: reranked.append((order, itc, itm, rule)) or rerank_order(order, itc, itm, rule),
    )
    out = protocol("retrieval", rerank_k=10_000, max_images=4, pair_batch_size=7)(module, inputs, batch_size=3)
    itc_objective = module.objectives.pop("itc")
    itm_only = protocol("retrieval", itm_only_max_images=4, pair_batch_size=7)(module, inputs, batch_size=3)
    rows = list(range(4))
    captions = column(dm.datasets["test"], "captions")
    texts = [c for r in rows for c in captions[r]]
    txt2img = torch.tensor([i for i, r in enumerate(rows) for _ in captions[r]])
    itm, model = module.objectives["itm"], module.model
    with eval_mode(module):
        image, text = encode_images(model, inputs, rows, 64), encode_texts(model, inputs, texts, 64)
        text_emb, image_emb = itc_objective.embed(text.pooled, image.pooled)
        brute = torch.tensor(
            [
                [
                    itm.head(model.fuse(text.index(torch.tensor([t])), image.index(torch.tensor([i]))).pooled)[
                        0, 1
                    ].item()
                    for t in range(len(texts))
                ]
                for i in range(len(rows))
            ]
        )  # (N_img, N_txt) positive-class logits
    sim = image_emb @ text_emb.T
    assert [r[3] for r in reranked] == ["itm", "itm", "itm_itc", "itm_itc"]  # i2t then t2i, per rule
    for (order, itc, itm_k, _), expected_itm, expected_sim in zip(
        reranked, [brute, brute.T] * 2, [sim, sim.T] * 2, strict=True
    ):
        assert itm_k.shape == order.shape  # k >= gallery: every document is a candidate
        torch.testing.assert_close(torch.empty_like(itm_k).scatter_(1, order, itm_k), expected_itm, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.empty_like(itc).scatter_(1, order, itc), expected_sim, atol=1e-5, rtol=0)
    ((all_pairs, _),) = seen  # ITM on every pair (the ITC path ranks by orders, not score matrices)
    torch.testing.assert_close(all_pairs, brute, atol=1e-5, rtol=0)
    assert out["retrieval/itm/rmean"] == out["retrieval/rmean"] == recall_metrics(brute, txt2img)["rmean"]
    assert out["retrieval/itm_itc/rmean"] == recall_metrics(brute + sim, txt2img)["rmean"]
    assert itm_only["retrieval/rmean"] == recall_metrics(brute, txt2img)["rmean"]
    assert out["retrieval/num_texts"] == itm_only["retrieval/num_texts"] == len(texts)
    assert "retrieval/itc/rmean" in out and "retrieval/itc/rmean" not in itm_only


def test_vqa_oracle_scores_one_per_question_type(tiny_cfg, monkeypatch):
    module, dm = _build(tiny_cfg, "objective=[itc,vqa]")
    ds = dm.datasets["test"]
    index = {a: i for i, a in enumerate(dm.info.answers)}
    truth = iter([index[a] for row in column(ds, "answers") for a in row])  # protocol order: image rows, then questions

    def oracle(model, batch, text, image):
        B = image.pooled.shape[0]
        return torch.nn.functional.one_hot(torch.tensor([next(truth) for _ in range(B)]), len(index)).float()

    monkeypatch.setattr(module.objectives["vqa"], "answer_logits", oracle)
    inputs = Inputs(ds, dm.tokenizer, answers=dm.info.answers)
    metrics, predictions = protocol("vqa")(module, inputs, batch_size=5, return_predictions=True)
    assert metrics["vqa/acc"] == 1.0 and {
        f"vqa/acc_{t}" for t in ("color", "shape", "count", "exist", "relation")
    } <= set(metrics)
    assert all(v == 1.0 for v in metrics.values())
    assert len(predictions) == sum(len(q) for q in column(ds, "questions")) and predictions[0][2] == predictions[0][3]


def test_zeroshot_oracle(tiny_cfg, monkeypatch):
    """Embeddings that name an image's first object: top-1 is 1 on every image."""
    module, dm = _build(tiny_cfg, "objective=[itc]")
    ds = dm.datasets["test"]
    colors, shapes_ = (
        sorted({c for row in column(ds, "obj_color") for c in row}),
        sorted({s for row in column(ds, "obj_shape") for s in row}),
    )
    classes = [(c, s) for c in colors for s in shapes_]
    row_of = {int(i): r for r, i in enumerate(ds.image_ids)}

    def features(idx):
        pooled = torch.nn.functional.one_hot(torch.tensor(idx), len(classes)).float()
        return Features(pooled[:, None], torch.ones(len(idx), 1, dtype=torch.bool), pooled)

    def encode_image(batch):
        rows = [row_of[int(i)] for i in batch["image_id"]]
        return features([classes.index((column(ds, "obj_color")[r][0], column(ds, "obj_shape")[r][0])) for r in rows])

    def encode_text(ids, mask, causal=False):
        words = [t.split() for t in dm.tokenizer.decode_batch(ids.tolist(), skip_special_tokens=True)]
        return features([classes.index((w[1], w[2])) for w in words])  # "a {color} {shape}"

    monkeypatch.setattr(module.model, "encode_image", encode_image)
    monkeypatch.setattr(module.model, "encode_text", encode_text)
    monkeypatch.setattr(module.objectives["itc"], "embed", lambda t, i: (t, i))
    out = protocol("zeroshot")(module, Inputs(ds, dm.tokenizer, zeroshot_classes=dm.zeroshot_classes), batch_size=256)
    assert out == {"zeroshot/top1": 1.0, "zeroshot/top1_single": 1.0}


def test_wandb_gets_summary_plot_and_sample_table_with_images(tiny_cfg, tmp_path):
    import wandb

    _, dm = _build(tiny_cfg, "objective=[itc]")

    class WandbLogger:  # the interface of Lightning's WandbLogger that presentation uses
        def __init__(self):
            self.experiment = type("Run", (), {"summary": {}})()
            self.calls = {}

        def log_metrics(self, metrics, step):
            self.calls["metrics"] = metrics

        def save(self):
            pass

        def log_image(self, key, images):
            self.calls["image"] = (key, images)

        def log_table(self, key, columns, data):
            self.calls["table"] = (key, columns, data)

    plot = tmp_path / "robustness.png"
    plot.write_bytes(b"png")
    lg = WandbLogger()
    samples = Samples(
        vqa=[(0, "what color is the circle?", "red", "blue")], captioning=[(1, ["a red circle"], "a blue circle")]
    )
    log_to_loggers([lg], {"test/vqa/acc": 0.5}, samples=samples, datamodule=dm, plot=plot)
    assert lg.experiment.summary == {"test/vqa/acc": 0.5} and lg.calls["image"][0] == "eval/robustness"
    key, columns, data = lg.calls["table"]
    assert key == "eval/samples" and len(data) == 2 and isinstance(data[0][1], wandb.Image)
    assert data[0][2:] == ["what color is the circle?", "red", "blue"] and data[1][4] == "a blue circle"


def _tree(path: Path) -> dict[str, tuple[str, float]]:
    return {
        str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _eval_cli(args, cwd, timeout=300):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "mmbench.evaluate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_training_report_and_mmbench_eval_on_the_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    record = run(cfg)
    out = Path(cfg.paths.output_dir)
    m = record["metrics"]
    for key in (
        "test/retrieval/i2t_r1",
        "test/retrieval/t2i_r10",
        "test/retrieval/rmean",
        "test/vqa/acc",
        "test/vqa/acc_count",
        "test/diagnostics/match_acc",
        "test/diagnostics/group_score",
        "test/zeroshot/top1",
        "test/robustness/image_noise/vqa/acc/auc",
        "test/robustness/blank_image/vqa/acc",
    ):
        assert key in m, key
    comp = record["complexity"]
    assert (
        comp["inference_samples_per_s"] > 0
        and comp["peak_memory_mb"] > 0
        and comp["params_per_component"]["fusion"] > 0
    )
    report = (out / "report.md").read_text()
    assert (
        "`test/retrieval/i2t_r1`" in report
        and "robustness.png" in report
        and "image_noise (auc)" in report
        and (out / "robustness.png").stat().st_size > 0
    )
    assert "test/retrieval/rmean" in (out / "csv" / "metrics.csv").read_text().splitlines()[0]

    from omegaconf import OmegaConf

    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")  # as the CLI's Hydra writes it
    before = _tree(out)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    ckpt = out / "checkpoints" / "best.ckpt"
    res = _eval_cli([f"ckpt_path={ckpt}", "logger=csv"], cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _tree(out) == before  # the training run is only read
    evals = list((cwd / "outputs" / "evals").iterdir())
    assert len(evals) == 1
    saved = json.loads((evals[0] / "metrics.json").read_text())
    assert saved["status"] == "completed" and saved["mode"] == "eval" and saved["choices"]["model"] == "vilt"
    suite_keys = [
        k for k in saved["metrics"] if k.split("/")[1] in ("retrieval", "vqa", "diagnostics", "zeroshot", "robustness")
    ]
    assert len(suite_keys) > 50
    assert {k: saved["metrics"][k] for k in suite_keys} == {k: m[k] for k in suite_keys}  # the same numbers again
    assert "test/vqa/question_prior_baseline" in suite_keys  # mmbench-eval reports the blind baselines too
    assert (evals[0] / "report.md").exists() and (evals[0] / "csv" / "metrics.csv").exists()

    # another data config: a smaller test split (a new Shapes cache); the model keeps its training vocabulary
    res = _eval_cli(
        [f"ckpt_path={ckpt}", "logger=csv", "+data.source.num_test=24", "eval.protocols=[retrieval,vqa]"], cwd
    )
    assert res.returncode == 0, res.stderr[-3000:]
    new = [p for p in (cwd / "outputs" / "evals").iterdir() if p != evals[0]]
    saved = json.loads((new[0] / "metrics.json").read_text())
    assert saved["metrics"]["test/retrieval/num_images"] == 24 and "test/vqa/acc" in saved["metrics"]
    # the blind baselines are those of the new test split, not copied from training
    assert 0 <= saved["metrics"]["test/vqa/majority_baseline"] <= 1
    assert saved["metrics"]["test/vqa/question_prior_baseline"] != m["test/vqa/question_prior_baseline"]
    assert _tree(out) == before


def test_eval_cli_help_is_fast_and_bad_checkpoint_is_one_message(tmp_path):
    t0 = time.time()
    res = _eval_cli(["--help"], tmp_path, timeout=60)
    assert res.returncode == 0 and "ckpt_path" in res.stdout and "eval:" in res.stdout
    assert time.time() - t0 < 30
    res = _eval_cli(["ckpt_path=nope.ckpt", "logger=csv"], tmp_path)
    assert res.returncode == 2 and "is not a file" in res.stderr and "Traceback" not in res.stderr
    res = _eval_cli(["logger=csv"], tmp_path)  # no ckpt_path at all
    assert res.returncode == 2 and "ckpt_path is not set" in res.stderr and "Traceback" not in res.stderr


def test_peak_memory_is_per_run():
    """A run's peak does not include what an earlier run in the same process held (a joblib worker
    runs several sweep jobs): 300 MiB touched before the reset do not count, 300 MiB after it do."""
    import numpy as np

    from mmbench.metrics.complexity import peak_memory_mb, reset_peak_memory

    cpu = torch.device("cpu")
    big = np.ones(300 * 2**20, dtype=np.uint8)  # touched pages: resident
    before = peak_memory_mb(cpu)
    del big
    reset_peak_memory()
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("no /proc/self/clear_refs: the peak is the process' lifetime peak here")
    after_reset = peak_memory_mb(cpu)
    assert after_reset < before - 250
    big = np.ones(300 * 2**20, dtype=np.uint8)
    assert peak_memory_mb(cpu) > after_reset + 250
    del big


def test_evaluation_settings_have_one_default_each():
    """Every protocol setting comes from conf/eval/default.yaml (the suite restates none: rerank_k was
    16 in code and 4 in the YAML); a partial `eval` node keeps the other defaults; an unknown protocol
    name is refused."""
    from omegaconf import OmegaConf

    from mmbench.metrics.suite import EVAL_DEFAULTS, evaluate_suite, with_defaults

    yaml = OmegaConf.to_container(OmegaConf.load(EVAL_DEFAULTS))
    assert with_defaults({}) == yaml
    merged = with_defaults({"retrieval": {"max_images": 5}, "protocols": ["vqa"]})
    assert merged["retrieval"] == {**yaml["retrieval"], "max_images": 5} and merged["protocols"] == ["vqa"]
    with pytest.raises(ValueError, match=r"unknown evaluation protocol\(s\) \['retrival'\]"):
        evaluate_suite(None, None, {"protocols": ["retrival"]})
    # each protocol's node names its function, whose settings have no default of their own
    import inspect

    from hydra.utils import get_method

    from mmbench.metrics import clean_protocols

    assert clean_protocols(yaml) == [
        "retrieval",
        "vqa",
        "vqa_generative",
        "classification",
        "diagnostics",
        "captioning",
        "zeroshot",
        "winoground",
        "aro_relation",
        "aro_attribution",
        "sugarcrepe",
        "t2i",
        "t2i_unguided",
    ]
    for name in clean_protocols(yaml):
        node = yaml[name]
        params = inspect.signature(get_method(node["_target_"])).parameters
        settings = {k for k in node if not k.startswith("_")} | {"batch_size"}
        assert settings <= set(params), name
        assert all(params[k].default is inspect.Parameter.empty for k in settings), name
