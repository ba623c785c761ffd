"""objective=t2i_vqvae then objective=t2i_ar (DALL-E-style text-to-image in two stages): the VQ-VAE's lookup and losses
on a hand-made codebook, the straight-through gradient, the transformer's causality and padding invariance, the KV
cache against the full pass, guidance, top-k and seeds of the sampler, and the two stages chained through
model.init_from (the t2i protocol scoring stage 2; a stage-2 run stopped and resumed; refusals); the EMA codebook
update and dead-code restarts on hand-made batches, and a stage-1 run with them stopped and resumed."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from mmbench.builder import build_datamodule, build_module
from mmbench.config import ConfigError
from mmbench.models.layers import KVCache
from mmbench.models.outputs import Features
from mmbench.models.vq import VectorQuantizer, VQTokenizer
from mmbench.objectives.base import ImageGenerator
from mmbench.objectives.context import StepContext
from mmbench.objectives.t2i_ar import T2IAR, guide, pick
from mmbench.objectives.t2i_vqvae import T2IVQVAE, code_statistics
from mmbench.pipeline import run
from mmbench.validation import validate
from tests.conftest import ROOT, TINY, cli, compose_cfg, stopped_then_resumed

D, K = 8, 16  # text width, codebook size of the unit tests
TOKENIZER = {"channels": [4, 8], "codes": K, "code_dim": 4}  # 16 px -> a 4x4 grid

# tiny runs: 24-px Shapes (a 6x6 grid of codes), model=concat (a 2-layer text transformer), a 1-block transformer
BASE = [*[o for o in TINY if not o.startswith("objective.")], "hydra.mode=RUN", "model=concat"]
BASE += ["data.image_size=24", "data.batch_size=8"]
STAGE1 = ["experiment=t2i_ar_stage1", *BASE]
STAGE1 += ["objective.t2i_vqvae.channels=[8,16]", "objective.t2i_vqvae.codes=32", "objective.t2i_vqvae.code_dim=8"]
STAGE2 = ["experiment=t2i_ar_stage2", *BASE, "objective.t2i_ar.tokenizer.channels=[8,16]"]
STAGE2 += ["objective.t2i_ar.tokenizer.codes=32", "objective.t2i_ar.tokenizer.code_dim=8"]
STAGE2 += ["objective.t2i_ar.dim=16", "objective.t2i_ar.depth=1", "objective.t2i_ar.heads=2"]
STAGE2 += ["eval.t2i.max_images=2", "eval.t2i_unguided.max_images=2"]
# last.ckpt after every step, so that a run stopped before step 3 (of 4) resumes mid-epoch from step 3's state
# (at the default interval of 100 steps it would have no checkpoint and rerun from scratch)
MID_EPOCH_CHECKPOINTS = ["callbacks.last_checkpoint.every_n_train_steps=1"]


def _objective(**settings) -> T2IAR:
    torch.manual_seed(0)
    kw = dict(text_dim=D, image_size=16, max_text_len=12, tokenizer=TOKENIZER, dim=16, depth=2, heads=2)
    return T2IAR(**{**kw, **settings}).eval()


def _text(B: int = 3, T: int = 5, seed: int = 0) -> Features:
    g = torch.Generator().manual_seed(seed)
    return Features(torch.randn(B, T, D, generator=g), torch.ones(B, T, dtype=torch.bool), torch.zeros(B, D))


def _cond(objective: T2IAR, text: Features):
    return objective.condition(text, torch.zeros(text.tokens.shape[0], dtype=torch.bool))


# ---- stage 1: the VQ-VAE by hand


def test_nearest_code_and_the_codebook_and_commitment_losses_on_a_hand_made_case():
    vq = VectorQuantizer(3, 2, normalize=False)
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    # two grid vectors (B=1, D=2, h=1, w=2): (0.9, 0.1) is nearest code 1 (squared distance 0.02, vs 0.82 and
    # 4.42), (0.2, 1.5) code 2 (0.29, vs 2.29 and 2.89)
    z_e = torch.tensor([[0.9, 0.2], [0.1, 1.5]])[None, :, None, :].requires_grad_(True)  # (1, 2, 1, 2)
    q = vq(z_e)
    assert q.codes.tolist() == [[[1, 2]]]
    # both losses: mean of (z_q - z_e)^2 over the 4 numbers = (0.1^2 + 0.1^2 + 0.2^2 + 0.5^2) / 4
    torch.testing.assert_close(q.codebook_loss, torch.tensor(0.0775))
    torch.testing.assert_close(q.commitment_loss, torch.tensor(0.0775))
    z_q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])[None, :, None, :]
    torch.testing.assert_close(q.z, z_q)  # the straight-through output is z_q in value
    # the commitment loss moves the encoder only, the codebook loss the codebook only (the stop-gradients)
    q.commitment_loss.backward(retain_graph=True)
    torch.testing.assert_close(z_e.grad, 2 * (z_e - z_q).detach() / 4)
    assert vq.codebook.weight.grad is None
    z_e.grad = None
    q.codebook_loss.backward()
    assert z_e.grad is None
    expected = torch.tensor([[0.0, 0.0], [0.1, -0.1], [-0.2, 0.5]]) * 2 / 4  # d/de of the used rows; code 0 unused
    torch.testing.assert_close(vq.codebook.weight.grad, expected)


def test_the_normalised_lookup_is_by_cosine_and_gives_unit_codes():
    vq = VectorQuantizer(2, 2, normalize=True)
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.tensor([[10.0, 0.0], [0.6, 0.8]]))
    # (1, 1): nearer (0.6, 0.8) in Euclidean distance as given, but by cosine (unit vectors) too; (3, 0.1): code 0
    # by cosine although (0.6, 0.8) is nearer to it unnormalised (distance^2 6.25 vs 49.01)
    z_e = torch.tensor([[1.0, 3.0], [1.0, 0.1]])[None, :, None, :]  # (1, 2, 1, 2)
    q = vq(z_e)
    assert q.codes.tolist() == [[[1, 0]]]
    torch.testing.assert_close(q.z[0, :, 0].t(), torch.tensor([[0.6, 0.8], [1.0, 0.0]]))  # unit-length codes
    unit = torch.nn.functional.normalize(z_e, dim=1)
    torch.testing.assert_close(q.commitment_loss, ((unit - q.z) ** 2).mean())


def test_the_straight_through_gradient_reaches_the_encoder_as_if_quantisation_were_the_identity():
    torch.manual_seed(0)
    tok = VQTokenizer(**TOKENIZER)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    recon, q = tok(x)
    assert q.codes.shape == (2, 4, 4) and torch.equal(q.codes.flatten(1), tok.tokenize(x))
    recon.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tok.encoder.parameters())
    # d loss / d z_e is exactly d loss / d z_q: the decoder's input gradient, passed through unchanged (without
    # the normalisation, whose own Jacobian would come between)
    tok = VQTokenizer(**TOKENIZER, normalize=False)
    z_e = tok.encoder(x).detach().requires_grad_(True)
    z_q = tok.quantizer.lookup(tok.quantizer.nearest(z_e.permute(0, 2, 3, 1))).detach().requires_grad_(True)
    tok.decoder(tok.quantizer(z_e).z).square().mean().backward()
    tok.decoder(z_q).square().mean().backward()
    torch.testing.assert_close(z_e.grad, z_q.grad)


def test_code_statistics_and_the_stage_one_loss():
    perplexity, usage = code_statistics(torch.tensor([0, 0, 1, 2]), 4)  # p = (1/2, 1/4, 1/4, 0)
    torch.testing.assert_close(perplexity, torch.tensor(2**1.5))  # exp(1.5 ln 2)
    assert usage.item() == 0.75
    torch.manual_seed(0)
    objective = T2IVQVAE(image_size=16, **TOKENIZER, beta=0.25).eval()  # eval: the EMA would move the codes
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = objective(None, {"pixel_values": x}, None, None, StepContext())
    recon, q = objective.tokenizer(x)
    expected = ((recon - x) ** 2).mean() + q.codebook_loss + 0.25 * q.commitment_loss
    torch.testing.assert_close(out.loss, expected)
    assert set(out.metrics) == {"recon", "codebook", "commitment", "perplexity", "usage"}
    assert 1 <= out.metrics["perplexity"] <= K and 0 < out.metrics["usage"] <= 1
    # the default codebook_update=ema has no codebook term; loss has it
    assert out.metrics["codebook"].item() == 0 and not objective.tokenizer.quantizer.codebook.weight.requires_grad
    torch.manual_seed(0)
    by_loss = T2IVQVAE(image_size=16, **TOKENIZER, beta=0.25, codebook_update="loss")  # train mode: no EMA
    out = by_loss(None, {"pixel_values": x}, None, None, StepContext())
    recon, q = by_loss.tokenizer(x)
    torch.testing.assert_close(out.loss, ((recon - x) ** 2).mean() + q.codebook_loss + 0.25 * q.commitment_loss)
    assert q.codebook_loss > 0 and by_loss.tokenizer.quantizer.codebook.weight.requires_grad
    assert "cluster_size" not in dict(by_loss.tokenizer.quantizer.named_buffers())


def test_the_ema_update_on_a_hand_made_batch_is_the_smoothed_moving_average():
    vq = VectorQuantizer(3, 2, normalize=False, ema_decay=0.5, dead_below=0.0)  # 0: no restarts here
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    with torch.no_grad():
        vq.codebook.weight.copy_(codebook)
        vq.cluster_size.copy_(torch.tensor([2.0, 1.0, 3.0]))
        vq.cluster_sum.copy_(torch.tensor([[0.2, 0.2], [1.0, 0.0], [0.0, 6.0]]))
    # three grid vectors: (0.9, 0.1) and (1.1, -0.1) nearest code 1, (0.2, 1.5) code 2; none code 0
    z_e = torch.tensor([[0.9, 1.1, 0.2], [0.1, -0.1, 1.5]])[None, :, None, :]  # (1, 2, 1, 3)
    q = vq.train()(z_e)
    assert q.codes.tolist() == [[[1, 1, 2]]]
    torch.testing.assert_close(q.z[0, :, 0].t(), codebook[[1, 1, 2]])  # the codes before the update
    assert q.codebook_loss.item() == 0 and not vq.codebook.weight.requires_grad  # no codebook loss term
    # n = (0, 2, 1), s = (0, 0), (2, 0), (0.2, 1.5); N = 0.5 N + 0.5 n, S = 0.5 S + 0.5 s
    size = torch.tensor([1.0, 1.5, 2.0])
    total = torch.tensor([[0.1, 0.1], [1.5, 0.0], [0.1, 3.75]])
    torch.testing.assert_close(vq.cluster_size, size)
    torch.testing.assert_close(vq.cluster_sum, total)
    eps = vq.eps
    smoothed = (size + eps) / (4.5 + 3 * eps) * 4.5  # Laplace smoothing, sum of N = 4.5
    torch.testing.assert_close(vq.codebook.weight, total / smoothed[:, None])
    torch.testing.assert_close(vq.codebook.weight[1], torch.tensor([1.0, 0.0]), atol=1e-4, rtol=0)  # ~ S / N
    # evaluation mode, and the stage-2 entry points, update nothing
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq.eval()(z_e)
    vq.train().nearest(z_e.permute(0, 2, 3, 1))
    assert all(torch.equal(v, before[k]) for k, v in vq.state_dict().items())


def test_a_dead_code_restarts_at_an_encoder_output_of_the_batch_and_live_codes_are_untouched():
    def quantizer() -> VectorQuantizer:
        vq = VectorQuantizer(3, 2, normalize=False, ema_decay=0.9, dead_below=1.0).train()
        with torch.no_grad():
            vq.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
            vq.cluster_size.copy_(torch.tensor([5.0, 5.0, 1.05]))  # code 2: 0.9 * 1.05 < 1 when unused
            vq.cluster_sum.copy_(torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 2.1]]))
        return vq

    z_e = torch.tensor([[0.1, 0.9, 1.1, -0.1], [0.0, 0.1, -0.1, 0.1]])[None, :, None, :]  # codes 0, 1, 1, 0
    vectors = z_e[0, :, 0].t()  # (4, 2)
    vq = quantizer()
    torch.manual_seed(0)
    q = vq(z_e)
    assert q.codes.tolist() == [[[0, 1, 1, 0]]]
    size = torch.tensor([0.9 * 5 + 0.1 * 2, 0.9 * 5 + 0.1 * 2, 1.0])  # code 2 restarted: N = dead_below
    torch.testing.assert_close(vq.cluster_size, size)
    restarted = vq.codebook.weight[2].clone()
    assert any(torch.equal(restarted, v) for v in vectors), restarted  # one of the batch's encoder outputs
    torch.testing.assert_close(vq.cluster_sum[2], restarted)  # S = dead_below * e: the code is its own mean
    live = torch.tensor([[0.0, 0.01], [0.9 * 5 + 0.1 * 2.0, 0.0]])  # S of codes 0 and 1: 0.9 S + 0.1 s
    torch.testing.assert_close(vq.cluster_sum[:2], live)
    total = size.sum()
    smoothed = (size[:2] + vq.eps) / (total + 3 * vq.eps) * total
    torch.testing.assert_close(vq.codebook.weight[:2], live / smoothed[:, None])  # the EMA means, not restarted
    # the draw is from torch's global generator (seeded by Lightning): the same seed restarts at the same vector
    again = quantizer()
    torch.manual_seed(0)
    again(z_e)
    assert torch.equal(again.codebook.weight, vq.codebook.weight)


def test_the_first_training_batch_starts_every_code_at_the_data():
    torch.manual_seed(0)
    tok = VQTokenizer(**TOKENIZER, ema_decay=0.99).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    tok(x)
    z = torch.nn.functional.normalize(tok.encoder(x).permute(0, 2, 3, 1).flatten(0, 2), dim=-1)  # (32, D)
    assert torch.equal(tok.quantizer.cluster_size, torch.ones(K))  # all K were below 1 after one step: restarted
    distance = (tok.quantizer.codebook.weight[:, None] - z[None]).norm(dim=-1)  # (K, 32)
    assert (distance.min(1).values < 1e-6).all()  # every code is one of the batch's (unit) encoder outputs
    assert len({tuple(v.tolist()) for v in tok.quantizer.codebook.weight}) == K  # distinct ones (32 >= 16)


# ---- stage 2: the transformer


def test_changing_image_code_j_changes_no_logit_at_positions_up_to_j():
    objective = _objective()
    text = _text()
    codes = torch.randint(0, K, (3, 16), generator=torch.Generator().manual_seed(1))
    reference = objective.transformer(*_cond(objective, text), codes)  # (3, 16, K): row i scores code i
    for j in (0, 5, 14):
        changed = codes.clone()
        changed[:, j] = (changed[:, j] + 1) % K
        logits = objective.transformer(*_cond(objective, text), changed)
        torch.testing.assert_close(logits[:, : j + 1], reference[:, : j + 1], atol=1e-6, rtol=0)
        assert (logits[:, j + 1] - reference[:, j + 1]).abs().max() > 1e-4  # the next position does see it


def test_padding_the_caption_changes_no_logit():
    objective = _objective()
    text = _text()
    codes = torch.randint(0, K, (3, 16), generator=torch.Generator().manual_seed(1))
    padded = Features(
        torch.cat([text.tokens, torch.randn(3, 4, D)], 1),  # padding with arbitrary features, masked out
        torch.cat([text.mask, torch.zeros(3, 4, dtype=torch.bool)], 1),
        text.pooled,
    )
    reference = objective.transformer(*_cond(objective, text), codes)
    torch.testing.assert_close(objective.transformer(*_cond(objective, padded), codes), reference, atol=1e-6, rtol=0)


def test_the_kv_cache_gives_the_logits_of_the_full_pass():
    objective = _objective()
    text = _text()
    codes = torch.randint(0, K, (3, 16), generator=torch.Generator().manual_seed(2))
    full = objective.transformer(*_cond(objective, text), codes)
    caches = [KVCache() for _ in objective.transformer.blocks]
    logits, keys = objective.transformer.prefix(*_cond(objective, text), caches)
    steps = [logits]
    for i in range(1, 16):
        logits, keys = objective.transformer.step(codes[:, i - 1], i, keys, caches)
        steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=0)


def test_the_loss_is_the_cross_entropy_of_the_tokenizer_codes():
    objective = _objective(caption_dropout=0.0)
    text, x = _text(2), torch.rand(2, 3, 16, 16) * 2 - 1
    out = objective(None, {"pixel_values": x}, text, text, StepContext())
    codes = objective.tokenizer.tokenize(x)
    logits = objective.transformer(*_cond(objective, text), codes)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits.flatten(0, 1), codes.flatten()))
    assert not any(p.requires_grad for p in objective.tokenizer.parameters())  # frozen
    assert isinstance(objective, ImageGenerator)


def test_the_stage_two_tokenizer_is_bit_identical_after_training_steps_in_train_mode():
    objective = _objective(caption_dropout=0.5).train()
    assert not any("cluster" in k for k in objective.tokenizer.state_dict())  # no EMA state: nothing to update
    before = {k: v.clone() for k, v in objective.tokenizer.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        text, x = _text(4, seed=step), torch.rand(4, 3, 16, 16) * 2 - 1
        objective(None, {"pixel_values": x}, text, text, StepContext()).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(v, before[k]) for k, v in objective.tokenizer.state_dict().items())


def test_caption_dropout_gives_the_null_condition_in_training_only():
    objective = _objective(caption_dropout=0.5).train()
    text = _text(4000)
    torch.manual_seed(3)
    calls = []
    objective.transformer.register_forward_hook(lambda m, args, out: calls.append(args))
    objective(None, {"pixel_values": torch.zeros(4000, 3, 16, 16)}, text, text, StepContext())
    tokens, mask, _ = calls[-1]
    null = (tokens[:, 0] == objective.null_token.detach()).all(1) & ~mask[:, 1:].any(1)
    assert abs(null.float().mean().item() - 0.5) < 0.03
    assert torch.equal(tokens[~null], text.tokens[~null])
    objective.eval()
    objective(None, {"pixel_values": torch.zeros(4000, 3, 16, 16)}, text, text, StepContext())
    assert torch.equal(calls[-1][0], text.tokens)


# ---- sampling


def test_greedy_guided_sampling_writes_the_argmax_of_the_weighted_logit_difference_at_every_position():
    objective = _objective()
    text = _text()
    cond = _cond(objective, text)
    null = objective.condition(text, torch.ones(3, dtype=torch.bool))
    for g in (0.0, 1.0, 2.5):
        codes = objective.sample_codes(text, generator=torch.Generator().manual_seed(0), guidance=g, top_k=1)
        flat = codes.flatten(1)  # (3, 16)
        logits_c = objective.transformer(*cond, flat)  # the full pass on the sampled codes
        logits_u = objective.transformer(*null, flat)
        assert torch.equal(flat, (logits_u + g * (logits_c - logits_u)).argmax(-1)), g
    c, u = torch.randn(2, K), torch.randn(2, K)
    torch.testing.assert_close(guide(torch.cat([c, u]), 4.0), u + 4.0 * (c - u))


def test_top_k_never_draws_outside_the_k_best_and_draws_by_the_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, K, generator=g)
    u = torch.rand(20000, generator=g)
    drawn = pick(logits, u, temperature=1.0, top_k=3)
    best = logits.topk(3, -1).indices
    assert (best == drawn[:, None]).any(1).all()
    # the distribution: three codes at probabilities softmax(log p / T), here p = (0.5, 0.3, 0.2), T = 0.5
    p = torch.tensor([0.5, 0.3, 0.2])
    expected = p**2 / (p**2).sum()
    counts = torch.bincount(pick(p.log().expand(20000, 3), u, temperature=0.5, top_k=0), minlength=3) / 20000
    torch.testing.assert_close(counts, expected, atol=0.015, rtol=0)
    assert pick(p.log()[None], torch.tensor([0.999999]), temperature=1.0, top_k=2).item() == 1  # never code 2


def test_same_seed_same_images_and_per_caption_generators_do_not_depend_on_the_batch():
    objective = _objective()
    text = _text()
    first = objective.sample_codes(text, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, objective.sample_codes(text, generator=torch.Generator().manual_seed(4)))
    assert not torch.equal(first, objective.sample_codes(text, generator=torch.Generator().manual_seed(5)))
    together = objective.sample_codes(text, generator=[torch.Generator().manual_seed(10 + i) for i in range(3)])
    alone = objective.sample_codes(
        Features(text.tokens[2:], text.mask[2:], text.pooled[2:]), generator=[torch.Generator().manual_seed(12)]
    )
    assert torch.equal(together[2:], alone)


# ---- configs, and the two stages chained through the CLI's pipeline


def test_the_stage_two_tokenizer_defaults_are_the_stage_one_settings_and_bad_settings_are_refused():
    cfg = compose_cfg(["objective=[t2i_vqvae,t2i_ar]"])
    assert {k: cfg.objective.t2i_vqvae[k] for k in ("channels", "codes", "code_dim", "normalize")} == dict(
        cfg.objective.t2i_ar.tokenizer
    )
    for override, words in (
        ("objective.t2i_ar.top_k=-1", "objective.t2i_ar.top_k=-1"),
        ("objective.t2i_ar.temperature=0", "objective.t2i_ar.temperature=0"),
        ("objective.t2i_ar.caption_dropout=1", "objective.t2i_ar.caption_dropout=1"),
        ("objective.t2i_ar.tokenizer.channels=[8,8,8,8,8]", "divisible by 32, but it is 48"),
        ("+objective.t2i_ar.tokenizer.levels=2", "tokenizer.levels: not a tokenizer setting"),
    ):
        with pytest.raises(ConfigError) as err:
            validate(compose_cfg(["objective=[t2i_ar]", "model.init_from=/tmp", override]))
        assert words in str(err.value), str(err.value)
    with pytest.raises(ConfigError, match="divisible by 8, but it is 44"):
        validate(compose_cfg(["objective=[t2i_vqvae]", "data.image_size=44", "objective.t2i_vqvae.channels=[8,8,8]"]))
    for override, words in (
        ("objective.t2i_vqvae.codebook_update=kmeans", "codebook_update=kmeans: one of ema, loss"),
        ("objective.t2i_vqvae.ema_decay=1", "ema_decay=1"),
        ("objective.t2i_vqvae.dead_below=-1", "dead_below=-1"),
    ):
        with pytest.raises(ConfigError, match=words):
            validate(compose_cfg(["objective=[t2i_vqvae]", override]))


def test_stage_two_without_init_from_exits_2_before_any_data(tmp_path):
    cache = tmp_path / "cache"
    args = ["experiment=t2i_ar_stage2", f"hydra.run.dir={tmp_path / 'run'}"]
    done = cli(args, ROOT, {"MMBENCH_CACHE": str(cache)}, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "objective 't2i_ar' is a later training stage" in done.stderr
    assert "model.init_from=" in done.stderr
    assert not cache.exists() or not any(cache.iterdir()), "data was prepared before the refusal"


@pytest.fixture(scope="module")
def stage1(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i_ar") / "stage1"
    record = run(compose_cfg(STAGE1, out))
    assert record["status"] == "completed", record.get("error")
    return out, record


def _tokenizer_state(path, prefix: str) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def test_stage_one_then_stage_two_through_init_from_with_the_t2i_metrics(stage1, tmp_path):
    out1, record1 = stage1
    metrics1 = record1["metrics"]
    assert math.isfinite(metrics1["test/t2i_vqvae/recon"]) and 1 <= metrics1["test/t2i_vqvae/perplexity"] <= 32
    trained = _tokenizer_state(out1 / "checkpoints" / "best.ckpt", "objectives.t2i_vqvae.tokenizer.")
    statistics = {"quantizer.cluster_size", "quantizer.cluster_sum"}  # stage 1's EMA state (codebook_update=ema)
    assert statistics <= set(trained) and trained["quantizer.cluster_size"].sum() > 0
    trained = {k: v for k, v in trained.items() if k not in statistics}  # stage 2 takes the codes, not the EMA

    cfg = compose_cfg([*STAGE2, f"model.init_from={out1}"], tmp_path / "stage2")
    validate(cfg)
    module = build_module(cfg, build_datamodule(cfg).info)
    loaded = module.objectives["t2i_ar"].tokenizer.state_dict()
    assert set(loaded) == set(trained) and all(torch.equal(loaded[k], v) for k, v in trained.items())

    record = run(cfg)
    assert record["status"] == "completed", record.get("error")
    metrics = record["metrics"]
    assert 0 < metrics["test/t2i_ar/loss"] < 2 * math.log(32)
    assert metrics["test/t2i/overall/images"] == 8  # 4 captions of 2 images
    assert metrics["test/t2i_unguided/overall/images"] == 8  # and again without guidance
    assert all(0 <= metrics[f"test/t2i/overall/{k}"] <= 1 for k in ("present", "faithful", "caption_true"))
    assert math.isfinite(metrics["test/t2i/frechet"])
    after = _tokenizer_state(tmp_path / "stage2" / "checkpoints" / "last.ckpt", "objectives.t2i_ar.tokenizer.")
    assert all(torch.equal(after[k], v) for k, v in trained.items())  # frozen through stage 2

    # a tokenizer of other sizes than stage 1's is refused at build, naming the tensor
    wrong = compose_cfg([*STAGE2, f"model.init_from={out1}", "objective.t2i_ar.tokenizer.codes=64"])
    with pytest.raises(ValueError, match="must be the earlier run's"):
        build_module(wrong, build_datamodule(wrong).info)
    # ... and so is one that would read the codes otherwise (normalize, kept in the state dict as a flag)
    other = compose_cfg([*STAGE2, f"model.init_from={out1}", "objective.t2i_ar.tokenizer.normalize=false"])
    with pytest.raises(ValueError, match="normalized is False here but True in"):
        build_module(other, build_datamodule(other).info)


def test_a_stage_two_run_stopped_mid_epoch_resumes_to_the_uninterrupted_metrics(stage1, monkeypatch, tmp_path):
    args = [*STAGE2, f"model.init_from={stage1[0]}", "eval.protocols=[]", *MID_EPOCH_CHECKPOINTS]
    reference = run(compose_cfg(args, tmp_path / "uninterrupted"))
    resumed = stopped_then_resumed(args, tmp_path / "stopped", 3, monkeypatch)
    assert resumed["status"] == "completed"
    assert resumed["metrics"] == reference["metrics"]  # ==: bit-identical on CPU


def test_a_stage_one_run_with_ema_codes_stopped_mid_epoch_resumes_to_the_uninterrupted_metrics(
    cache_dir, monkeypatch, tmp_path
):
    # the EMA statistics are buffers (in the checkpoint) and the restarts draw from torch's generator, whose state
    # the checkpoint holds too: the resumed run's codes are the uninterrupted run's
    args = [*STAGE1, *MID_EPOCH_CHECKPOINTS]
    reference = run(compose_cfg(args, tmp_path / "uninterrupted"))
    resumed = stopped_then_resumed(args, tmp_path / "stopped", 3, monkeypatch)
    assert resumed["status"] == "completed"
    assert resumed["metrics"] == reference["metrics"]  # ==: bit-identical on CPU


# ---- experiment=t2i_sweep: both families (conf/experiment/t2i_arm/), 3 seeds, scored with and without guidance


def test_t2i_sweep_without_its_tokenizer_run_exits_2_before_any_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["experiment=t2i_sweep", f"hydra.sweep.dir={sweep_dir}"]
    done = cli(args, ROOT, {"MMBENCH_CACHE": str(tmp_path / "cache")}, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "t2i_tokenizer has no value" in done.stderr
    assert not sweep_dir.exists() and not (tmp_path / "cache").exists()  # no job started, no data prepared


def test_t2i_sweep_arms_share_everything_but_the_generator_and_the_ar_arm_loads_the_stage_one_tokenizer(stage1):
    out1, _ = stage1
    common = ["experiment=t2i_sweep", f"t2i_tokenizer={out1}", "hydra.mode=RUN"]
    sweep = OmegaConf.load(ROOT / "conf" / "experiment" / "t2i_sweep.yaml")
    assert dict(sweep.hydra.sweeper.params) == {"+experiment/t2i_arm": "ar,diffusion", "seed": "0,1,2"}
    arms = {arm: compose_cfg([*common, f"+experiment/t2i_arm={arm}"]) for arm in ("ar", "diffusion")}
    assert list(arms["ar"].objective) == ["t2i_ar"] and list(arms["diffusion"].objective) == ["t2i_diffusion"]
    assert arms["ar"].model.init_from == str(out1) and arms["diffusion"].model.init_from is None
    for key in ("data", "trainer", "eval", "model.text_dim", "model.name", "optimizer"):  # the same footing
        assert OmegaConf.select(arms["ar"], key) == OmegaConf.select(arms["diffusion"], key), key
    assert list(arms["ar"].eval.protocols) == ["t2i", "t2i_unguided"]
    validate(arms["diffusion"])
    # the ar arm reads its frozen tokenizer from the stage-1 run (at that run's tiny sizes here)
    tiny = ["objective.t2i_ar.tokenizer.channels=[8,16]", "objective.t2i_ar.tokenizer.codes=32"]
    ar = compose_cfg([*common, "+experiment/t2i_arm=ar", *tiny, "objective.t2i_ar.tokenizer.code_dim=8", *BASE])
    validate(ar)
    module = build_module(ar, build_datamodule(ar).info)
    trained = _tokenizer_state(out1 / "checkpoints" / "best.ckpt", "objectives.t2i_vqvae.tokenizer.")
    loaded = module.objectives["t2i_ar"].tokenizer.state_dict()
    assert set(loaded) and all(torch.equal(v, trained[k]) for k, v in loaded.items())
