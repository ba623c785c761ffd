"""Connectors into a pretrained, frozen LM (issue 34): stage 0 (experiment=lm_stage0) pretrains model=llava's
decoder LM on the data's text alone with objective lm_text; stage 1 (experiment=connector_frozen) takes that
LM's tensors alone (model.init_parts=[language_model], reported in init_from.json), freezes it and trains the
connector (and the from-scratch ViT), or LoRA adapters + the connector in the LoRA arm."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from mmbench.builder import build_datamodule, build_module
from mmbench.models.decoder import GPTDecoder
from mmbench.models.outputs import Features
from mmbench.objectives.context import StepContext
from mmbench.objectives.lm_text import TextLM
from mmbench.pipeline import run
from tests.conftest import TINY, cli, compose_cfg

TINY_PARTS = [o for o in TINY if not o.startswith("objective.")]
ARMS = ["prefix", "prefix_pooled", "prefix_qformer", "prefix_resampler", "gated_xattn_lm", "prefix_lora"]


class _LMOnly(nn.Module):
    """What TextLM reads of a model: its language model part."""

    def __init__(self, lm: GPTDecoder):
        super().__init__()
        self.language_model = lm


def _decoder(vocab: int = 13) -> GPTDecoder:
    torch.manual_seed(0)
    return GPTDecoder(vocab_size=vocab, dim=8, depth=2, heads=2, max_len=32).eval()


def _texts() -> dict[str, torch.Tensor]:
    """Two captions and two "question answer" strings, right-padded with 0; the answers start at 3 and 4."""
    return {
        "input_ids": torch.tensor([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]]),
        "qa_ids": torch.tensor([[1, 10, 11, 12, 2], [1, 10, 3, 4, 2]]),
        "qa_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]),
        "answer_start": torch.tensor([3, 4]),
        "pixel_values": torch.zeros(2, 3, 4, 4),
    }


def _no_image() -> Features:
    return Features(torch.zeros(2, 1, 8), torch.ones(2, 1, dtype=torch.bool), torch.zeros(2, 8))


def _objective(lm: GPTDecoder, **kw) -> TextLM:
    return TextLM(dim=8, vocab_size=lm.vocab_size, pad_id=0, lm=lm, **kw)


def test_lm_text_loss_is_the_next_token_cross_entropy_of_every_text_token_and_sees_no_image():
    lm = _decoder()
    model, batch = _LMOnly(lm), _texts()
    objective = _objective(lm).eval()
    out = objective(model, batch, _no_image(), _no_image(), StepContext())

    # by hand: each text run alone, unpadded; token t+1 scored from position t, every token after [CLS]
    nll, hits, n, answer_hits, answer_n, first_hits = 0.0, 0, 0, 0, 0, 0
    for ids_key, mask_key in (("input_ids", "attention_mask"), ("qa_ids", "qa_mask")):
        for row in range(2):
            ids = batch[ids_key][row][batch[mask_key][row].bool()]  # (L,) real tokens only
            with torch.no_grad():
                logp = lm.logits(lm.run(lm.embed(ids[None]), torch.ones(1, len(ids)).bool()))[0].log_softmax(-1)
            for t in range(len(ids) - 1):
                nll -= logp[t, ids[t + 1]].item()
                hit = int(logp[t].argmax().item() == ids[t + 1].item())
                hits, n = hits + hit, n + 1
                if ids_key == "qa_ids" and t + 1 >= batch["answer_start"][row]:
                    answer_hits, answer_n = answer_hits + hit, answer_n + 1
                if ids_key == "qa_ids" and t + 1 == batch["answer_start"][row]:
                    first_hits += hit
    assert n == 4 + 3 + 4 + 4  # the question tokens are targets too, the answers and [SEP]
    assert out.loss.item() == pytest.approx(nll / n, rel=1e-5)
    assert out.metrics["ppl"].item() == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert out.metrics["acc"].item() == pytest.approx(hits / n)
    assert out.metrics["answer_acc"].item() == pytest.approx(answer_hits / answer_n)
    assert out.metrics["first_answer_acc"].item() == pytest.approx(first_hits / 2)  # one first token per row

    # a known number: with no word embeddings the tied head scores every token 0, so the loss is log(vocab)
    with torch.no_grad():
        lm.word_embeddings.weight.zero_()
    assert objective(model, batch, _no_image(), _no_image(), StepContext()).loss.item() == pytest.approx(
        math.log(13), rel=1e-6
    )


def test_lm_text_in_the_stage_zero_model_reads_no_pixel(cache_dir, tmp_path):
    """Through experiment=lm_stage0's whole model (ViT and connector built): other pixel_values give other
    image features and the same loss, metrics and gradients of the LM."""
    cfg = compose_cfg(["experiment=lm_stage0", *TINY_PARTS], tmp_path)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm.info).eval()
    objective = module.objectives["lm_text"]
    batch = next(iter(dm.val_dataloader()))
    other = {**batch, "pixel_values": torch.randn_like(batch["pixel_values"])}
    outs, grads = [], []
    for b in (batch, other):
        text, image = module.model.encode_text(b["input_ids"], b["attention_mask"]), module.model.encode_image(b)
        out = objective(module.model, b, text, image, StepContext())
        module.model.zero_grad()
        out.loss.backward()
        outs.append((out, image.tokens.detach()))
        lm_params = module.model.language_model.parameters()
        grads.append(torch.cat([p.grad.flatten() for p in lm_params if p.grad is not None]))
    (first, image_a), (second, image_b) = outs
    assert not torch.allclose(image_a, image_b)  # the images differ where the model encodes them
    assert torch.equal(first.loss, second.loss) and torch.equal(grads[0], grads[1])
    assert all(torch.equal(first.metrics[k], second.metrics[k]) for k in first.metrics)
    assert len(grads[0]) == sum(p.numel() for p in module.model.language_model.parameters())
    assert all(p.grad is None for p in module.model.vision_encoder.parameters())  # no gradient reaches the ViT


def test_lm_text_offset_puts_the_texts_at_later_positions_and_nothing_else():
    """Training texts at offset k, after k masked positions, score as the same LM with its position table
    shifted by k runs them at 0: the padding before them is not attended to."""
    lm, k = _decoder(), 3
    shifted = _decoder()
    with torch.no_grad():
        shifted.position_embeddings.weight[:-k] = lm.position_embeddings.weight[k:]
    batch = _texts()
    offset = _objective(lm, max_offset=k).train()
    offset.draw_offset = lambda: k  # type: ignore[method-assign]
    at_k = offset(_LMOnly(lm), batch, _no_image(), _no_image(), StepContext()).loss
    at_0 = _objective(shifted).eval()(_LMOnly(shifted), batch, _no_image(), _no_image(), StepContext()).loss
    plain = _objective(lm).eval()(_LMOnly(lm), batch, _no_image(), _no_image(), StepContext()).loss
    assert at_k.item() == pytest.approx(at_0.item(), rel=1e-5)
    assert at_k.item() != pytest.approx(plain.item(), rel=1e-3)  # the offset does change the positions
    draws = {TextLM.draw_offset(offset) for _ in range(50)}  # the method itself, not the fixed one above
    assert draws <= set(range(k + 1)) and len(draws) > 1
    assert TextLM.draw_offset(offset.eval()) == 0  # evaluation at position 0


def test_lm_text_qa_context_reads_the_caption_before_each_question():
    """qa_context: in training each question-answer text follows its example's caption, scored as the LM runs the
    two as one text; in evaluation the loss stays the blind one and context_* score the answers after the caption."""
    lm = _decoder()
    batch = {k: v[:1] for k, v in _texts().items()}
    batch["input_ids"], batch["attention_mask"] = batch["input_ids"][:, :5], batch["attention_mask"][:, :5]  # unpadded
    objective = _objective(lm, texts=["qa"], qa_context=True)
    out = objective.train()(_LMOnly(lm), batch, _no_image(), _no_image(), StepContext())
    caption, qa = batch["input_ids"][0], batch["qa_ids"][0]  # (5,), (5,)
    C, seq = len(caption), torch.cat([caption, qa])[None]  # by hand: one text, the caption then the question
    with torch.no_grad():
        logp = lm.logits(lm.run(lm.embed(seq), torch.ones_like(seq).bool()))[0].log_softmax(-1)  # (10, vocab)
    targets = range(len(qa) - 1)  # position C + t predicts qa[t + 1]
    assert out.loss.item() == pytest.approx(-sum(logp[C + t, qa[t + 1]].item() for t in targets) / 4, rel=1e-5)
    other = {**batch, "input_ids": batch["input_ids"].flip(1)}  # another caption: another loss
    moved = objective(_LMOnly(lm), other, _no_image(), _no_image(), StepContext()).loss.item() - out.loss.item()
    assert abs(moved) > 1e-5  # (a random 8-wide LM reads little of it, but above float noise, ~1e-7)

    evaluated = objective.eval()(_LMOnly(lm), batch, _no_image(), _no_image(), StepContext())
    blind = _objective(lm, texts=["qa"]).eval()(_LMOnly(lm), batch, _no_image(), _no_image(), StepContext())
    assert torch.equal(evaluated.loss, blind.loss) and "context_answer_acc" not in blind.metrics
    hits = [int(logp[C + t].argmax().item() == qa[t + 1].item()) for t in targets]  # answer from qa position 3 on
    start = int(batch["answer_start"][0])
    answer_hits = [h for t, h in zip(targets, hits, strict=True) if t + 1 >= start]
    assert evaluated.metrics["context_answer_acc"].item() == pytest.approx(sum(answer_hits) / len(answer_hits))
    assert evaluated.metrics["context_first_answer_acc"].item() == hits[start - 1]
    with pytest.raises(ValueError, match="qa_context=true: needs the qa texts"):
        _objective(lm, texts=["caption"], qa_context=True)


@pytest.fixture(scope="module")
def stage0(cache_dir, tmp_path_factory) -> Path:
    """A tiny experiment=lm_stage0 run directory."""
    out = tmp_path_factory.mktemp("stage0")
    cfg = compose_cfg(["experiment=lm_stage0", *TINY_PARTS], out)
    record = run(cfg)
    assert record["status"] == "completed"
    assert {"val/lm_text/ppl", "val/lm_text/loss", "test/lm_text/answer_acc"} <= set(record["metrics"])
    return out


def _stage1(arm: str, out: Path, init_from: Path | None) -> object:
    init = (
        [f"model.init_from={init_from}"] if init_from else ["model.init_from_required=false", "model.init_parts=null"]
    )
    return compose_cfg(
        ["experiment=connector_frozen", "hydra.mode=RUN", f"+experiment/connector_arm={arm}", *TINY_PARTS, *init], out
    )


def _model_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}


def test_stage_one_takes_exactly_the_stage_zero_lm_and_reports_what_it_left(stage0, tmp_path):
    ckpt = _model_state(stage0 / "checkpoints" / "best.ckpt")
    lm_keys = sorted(k for k in ckpt if k.startswith("language_model."))
    assert lm_keys and len(lm_keys) < len(ckpt)  # stage 0 also saved its (unused) ViT and connector
    # a checkpoint whose other tensors are unmistakable: were any of them loaded, the test would see it
    planted = torch.load(stage0 / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    for key, value in planted["state_dict"].items():
        if key.startswith("model.") and not key.startswith("model.language_model.") and value.is_floating_point():
            value.fill_(7.0)
    torch.save(planted, tmp_path / "planted.ckpt")

    cfg = _stage1("prefix_qformer", tmp_path / "s1", tmp_path / "planted.ckpt")
    info = build_datamodule(cfg).info
    pl.seed_everything(0)
    module = build_module(cfg, info)
    pl.seed_everything(0)
    fresh = build_module(_stage1("prefix_qformer", tmp_path / "fresh", None), info).model.state_dict()
    ours = module.model.state_dict()
    for key in lm_keys:
        assert torch.equal(ours[key], ckpt[key]), key
    others = [k for k in ours if not k.startswith("language_model.")]
    for key in others:  # at their initialisation: the same as a model built without init_from
        assert torch.equal(ours[key], fresh[key]), key
    report = module.model.init_report
    assert report["parts"] == ["language_model"] and report["loaded"] == lm_keys
    assert report["fresh"] == sorted(others)
    # stage 0's ViT tensors fit this model but were left out by choice; its MLP projector has no place here
    assert report["excluded"] == sorted(k for k in ckpt if k.startswith("vision_encoder.") and k in ours)
    assert report["dropped"] == sorted(k for k in ckpt if k not in ours) and report["dropped"]
    assert all(k.startswith("fusion.") for k in report["dropped"])

    # every tensor of a chosen part must be in the checkpoint: a missing one is an error, not a fresh init
    del planted["state_dict"][f"model.{lm_keys[0]}"]
    torch.save(planted, tmp_path / "short.ckpt")
    with pytest.raises(ValueError, match=f"lacks 1 of their tensors, e.g. {lm_keys[0]}"):
        build_module(_stage1("prefix", tmp_path / "s2", tmp_path / "short.ckpt"), info)


def _trained(cfg, steps: int = 3) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], object]:
    """(state before, state after `steps` training steps, module) of the stage-1 model `cfg` builds."""
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm.info)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    return before, module.model.state_dict(), module


def test_stage_one_trains_the_connector_on_the_frozen_lm(stage0, tmp_path):
    before, after, module = _trained(_stage1("prefix", tmp_path / "s1", stage0))
    stage0_lm = {
        k: v for k, v in _model_state(stage0 / "checkpoints" / "best.ckpt").items() if k.startswith("language_model.")
    }
    assert set(module.model.init_report["loaded"]) == set(stage0_lm)
    assert not any(p.requires_grad for p in module.model.language_model.parameters())
    for key, value in stage0_lm.items():
        assert torch.equal(before[key], value) and torch.equal(after[key], value), key  # loaded, then unchanged
    for part in ("fusion.", "vision_encoder."):  # the connector and the from-scratch ViT train
        weights = [k for k in after if k.startswith(part) and k.endswith("weight")]
        assert weights and all(not torch.equal(after[k], before[k]) for k in weights), part


def test_lora_arm_trains_adapters_and_connector_and_leaves_the_lm_weights(stage0, tmp_path):
    before, after, module = _trained(_stage1("prefix_lora", tmp_path / "lora", stage0))
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    lm_trainable = [n for n in trainable if n.startswith("language_model.")]
    assert lm_trainable and all("lora_" in n for n in lm_trainable)  # of the LM, the adapters alone
    assert {n.split(".")[0] for n in trainable} == {"language_model", "fusion", "vision_encoder"}  # ViT: from scratch
    stage0_lm = {
        k: v for k, v in _model_state(stage0 / "checkpoints" / "best.ckpt").items() if k.startswith("language_model.")
    }
    base = {k.replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}
    for key, value in stage0_lm.items():
        assert torch.equal(base[key], value), key
    lora_b = [k for k in after if "lora_B" in k]  # zero at initialisation (peft): any change is training
    assert lora_b and all(not torch.equal(after[k], before[k]) for k in lora_b)
    fusion = [k for k in after if k.startswith("fusion.") and k.endswith("weight")]
    assert fusion and all(not torch.equal(after[k], before[k]) for k in fusion)


@pytest.mark.parametrize("arm", ARMS)
def test_every_arm_composes_with_the_lm_frozen_and_its_own_connector(arm):
    cfg = compose_cfg(
        ["experiment=connector_frozen", "hydra.mode=RUN", f"+experiment/connector_arm={arm}", "model.init_from=x"]
    )
    assert cfg.language_model.freeze and list(cfg.model.init_parts) == ["language_model"]
    assert list(cfg.objective) == ["lm", "vqa_gen"] and list(cfg.eval.protocols) == ["vqa_generative", "captioning"]
    assert cfg.monitor.metric == "val/vqa_gen/acc"
    assert cfg.language_model.lora.r == (16 if arm == "prefix_lora" else 0)
    connector = "prefix" if arm == "prefix_lora" else arm
    reference = compose_cfg(["model=llava", f"fusion={connector}"])
    assert cfg.fusion == reference.fusion


def _cli(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    return cli(args, env={"MMBENCH_CACHE": str(cache)}, timeout=600)


def test_stage_one_without_a_stage_zero_run_exits_2_before_any_data(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    done = _cli(["experiment=connector_frozen", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cache)
    assert done.returncode == 2, done.stderr
    assert "later training stage (model.init_from_required): give the run it starts from" in done.stderr
    assert not any(cache.iterdir()) and not (tmp_path / "sweep").exists()  # no data prepared, no job started


def test_cli_chain_stage_zero_then_stage_one(cache_dir, tmp_path):
    tiny = [o for o in TINY_PARTS if not o.startswith("~")] + ["~callbacks.progress_bar"]
    s0 = tmp_path / "s0"
    done = _cli(["experiment=lm_stage0", *tiny, f"hydra.run.dir={s0}"], cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((s0 / "metrics.json").read_text())["status"] == "completed"
    sweep = tmp_path / "s1"
    args = [
        "experiment=connector_frozen",
        *tiny,
        f"model.init_from={s0}",
        "+experiment/connector_arm=prefix_pooled,prefix_lora",
    ]
    done = _cli([*args, "seed=0", f"hydra.sweep.dir={sweep}"], cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    for arm in ("prefix_pooled", "prefix_lora"):
        job = sweep / f"+experiment_connector_arm={arm},seed=0"
        record = json.loads((job / "metrics.json").read_text())
        assert record["status"] == "completed" and "test/vqa_generative/acc" in record["metrics"]
        assert json.loads((job / "init_from.json").read_text())["parts"] == ["language_model"]


def test_lm_text_without_a_language_model_is_refused_by_validation():
    from mmbench.config import ConfigError
    from mmbench.validation import validate

    with pytest.raises(ConfigError, match="objective 'lm_text' uses a language model but none is configured"):
        validate(compose_cfg(["model=vilt", "objective=[lm_text]"]))
    with pytest.raises(ConfigError, match=r"texts=\['nope'\]: give a non-empty list from \['caption', 'qa'\]"):
        validate(compose_cfg(["experiment=lm_stage0", "objective.lm_text.texts=[nope]"]))
    validate(compose_cfg(["experiment=lm_stage0"]))
