"""Image-text retrieval in both directions: Recall@1/5/10 and their mean (multi-caption protocol).

Protocol (Karpathy-split COCO / Flickr30k, as in ALBEF, BLIP, ViLT):

* image -> text (i2t): an image is retrieved correctly at K if *any* of its captions ranks in the
  top K of all captions; text -> image (t2i): a caption is correct at K if its image is in the top K;
* every image and every caption is encoded once; ranking is by ITC cosine similarity
  (`img_emb @ txt_emb.T`, one matrix product);
* a model that also has ITM (a pair scorer on a fusion) re-ranks the top `rerank_k` candidates of
  every query by `rerank_rule` (`RERANK_RULES`), from the ITM head's positive-class logit
  `itm_head(fused)[:, 1]` as ALBEF's and BLIP's `evaluation()` take it (not the log-odds
  logit1 - logit0 of `ITM.pair_score`, which ranks differently). `itm` (ALBEF) ranks the candidates by
  that logit alone, `itm_itc` (BLIP) by the logit plus the ITC cosine similarity. Candidates outside
  the top k rank after every re-ranked one, in ITC order (ALBEF / BLIP give them -100, a tie). A pair
  in the top k of both directions is fused once: at most (N_img + N_txt) x k fusions, in batches;
* a model without ITC (e.g. ViLT trained with ITM only) ranks *every* pair by the ITM positive logit
  (ViLT's `rank_output` starts as that row of the ITM head), on at most `itm_only_max_images` images
  (and their captions): that is N_img x N_txt fusions.

Recall@K of one direction equals torchmetrics' `RetrievalHitRate(top_k=K)` with the query as the
group (tests/test_metrics.py checks this); it is computed here from one ranking per direction. Equal
scores (e.g. identical blank images under the `blank_image` robustness condition) rank in gallery
order, whatever the thread count (`top_indices`).

Names (prefixed with the split by the suite): `retrieval/i2t_r{1,5,10}`, `retrieval/t2i_r{1,5,10}`,
`retrieval/rmean`, `retrieval/num_images`, `retrieval/num_texts` (the gallery); with re-ranking
also `retrieval/itc/...` (the ITC ranking), `retrieval/itm/...` and `retrieval/itm_itc/...` (each
rule's ranking: both come from the same fusions), the headline names being `rerank_rule`'s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmbench.metrics.common import (
    Inputs,
    Unavailable,
    chunks,
    embedder,
    encode_images,
    encode_texts,
    eval_mode,
    pair_scorer,
)
from mmbench.objectives.itm import ITM

KS = (1, 5, 10)

#: how a re-ranked candidate is scored from its ITM positive-class logit and its ITC cosine similarity
RERANK_RULES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "itm": lambda itm, itc: itm,  # ALBEF: score_matrix[i, topk_idx] = itm_head(...)[:, 1]
    "itm_itc": lambda itm, itc: itm + itc,  # BLIP: ... = itm_head(...)[:, 1] + topk_sim
}


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k best columns of each row, (Q, k); equal scores in column order. `topk` orders ties as its
    kernel happens to (it differed between thread counts on identical blank images, so mmbench-eval
    disagreed with the end-of-training numbers); a stable sort makes the ranking a function of the scores."""
    return scores.sort(dim=1, descending=True, stable=True).indices[:, :k]


def hits_in_order(
    order: torch.Tensor, query_ids: torch.Tensor, doc_ids: torch.Tensor, ks=KS
) -> dict[int, torch.Tensor]:
    """Per query, whether a relevant document is among the first K of its ranking (a document is relevant
    to a query when their ids are equal). order (Q, n): documents best first, n >= max(ks) or all of
    them; query_ids (Q,); doc_ids (D,). Returns {K: (Q,) bool}."""
    kmax = min(max(ks), order.shape[1])
    hit = doc_ids[order[:, :kmax]] == query_ids[:, None]  # (Q, kmax)
    first = hit.cumsum(1) > 0  # (Q, kmax): a relevant document at rank <= r
    return {k: first[:, min(k, kmax) - 1] for k in ks}


def hits_at_k(scores: torch.Tensor, query_ids: torch.Tensor, doc_ids: torch.Tensor, ks=KS) -> dict[int, torch.Tensor]:
    """`hits_in_order` of the ranking by scores (Q, D), best first."""
    return hits_in_order(top_indices(scores, max(ks)), query_ids, doc_ids, ks)


def recall_from_orders(i2t: torch.Tensor, t2i: torch.Tensor, txt2img: torch.Tensor, ks=KS) -> dict[str, float]:
    """Recall@K both ways from rankings i2t (N_img, >= max(ks) captions, best first) and t2i (N_txt,
    >= max(ks) images); txt2img (N_txt,): the image of each caption."""
    images = torch.arange(i2t.shape[0], device=i2t.device)
    out = {}
    for name, (order, q, d) in {"i2t": (i2t, images, txt2img), "t2i": (t2i, txt2img, images)}.items():
        for k, hit in hits_in_order(order, q, d, ks).items():
            out[f"{name}_r{k}"] = hit.float().mean().item()
    out["rmean"] = sum(out.values()) / len(out)
    return out


def recall_metrics(
    i2t: torch.Tensor, txt2img: torch.Tensor, t2i: torch.Tensor | None = None, ks=KS
) -> dict[str, float]:
    """Recall@K both ways from score matrices i2t (N_img, N_txt) and t2i (N_txt, N_img; default i2t.T).

    txt2img (N_txt,): the image (row index of i2t) of each caption.
    """
    t2i = i2t.T if t2i is None else t2i
    return recall_from_orders(top_indices(i2t, max(ks)), top_indices(t2i, max(ks)), txt2img, ks)


def rerank_order(order: torch.Tensor, itc: torch.Tensor, itm: torch.Tensor, rule: str) -> torch.Tensor:
    """A ranking re-ranked: its first k documents sorted by `RERANK_RULES[rule](itm, itc)` (equal scores
    keep their ITC order), the rest after them unchanged.

    order (Q, n): each query's ITC ranking, best first; itc, itm (Q, k <= n): the ITC cosine similarity
    and ITM positive logit of order[:, :k]. Returns (Q, n).
    """
    k = itm.shape[1]
    second = RERANK_RULES[rule](itm, itc)  # (Q, k)
    perm = second.sort(dim=1, descending=True, stable=True).indices  # (Q, k)
    return torch.cat([order[:, :k].gather(1, perm), order[:, k:]], dim=1)


def rerank(
    sim: torch.Tensor,
    k: int,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    rule: str = "itm",
) -> torch.Tensor:
    """The whole re-ranked ranking as scores (Q, D), for callers that want a score matrix: each row's
    ITC top k ordered by `rule`, then the rest in ITC order; the score is minus the rank (0 = best).

    sim (Q, D): ITC cosine similarities; score_fn(q_idx (P,), d_idx (P,)) -> (P,): ITM positive logits,
    asked once for the Q * min(k, D) candidates.
    """
    Q, D = sim.shape
    order = top_indices(sim, D)  # (Q, D) the ITC ranking
    top = order[:, : min(k, D)]  # (Q, k) the candidates
    rows = torch.arange(Q, device=sim.device)[:, None].expand_as(top)  # (Q, k)
    itm = score_fn(rows.reshape(-1), top.reshape(-1)).view_as(top).to(sim)  # (Q, k)
    order = rerank_order(order, sim.gather(1, top), itm, rule)
    ranks = -torch.arange(D, dtype=sim.dtype, device=sim.device).expand(Q, D)  # 0, -1, -2, ...
    return torch.empty_like(sim).scatter_(1, order, ranks)


def candidate_pairs(top_i2t: torch.Tensor, top_t2i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs to fuse for re-ranking: every image's candidate captions top_i2t (N_img, k) and every
    caption's candidate images top_t2i (N_txt, k'), a pair in both only once.

    Returns (pairs (P,), which (N_img * k + N_txt * k',)): sorted pair ids image * N_txt + caption, and
    where each candidate's pair is (the i2t candidates first, row by row, then the t2i ones), so that
    pairs[which] lists the candidates. P <= N_img * k + N_txt * k'.
    """
    (N_img, _), (N_txt, _) = top_i2t.shape, top_t2i.shape
    images = torch.arange(N_img, device=top_i2t.device)[:, None]  # (N_img, 1)
    texts = torch.arange(N_txt, device=top_t2i.device)[:, None]  # (N_txt, 1)
    ids = torch.cat([(images * N_txt + top_i2t).reshape(-1), (top_t2i * N_txt + texts).reshape(-1)])
    return torch.unique(ids, return_inverse=True)


@torch.no_grad()
def match_logits(
    scorer: ITM, model, text, image, text_idx: torch.Tensor, image_idx: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """ITM positive-class logits `itm_head(fuse(text, image))[:, 1]` (P,) of the pairs (text_idx[p],
    image_idx[p]), fused in batches of `batch_size` pairs."""
    out = [
        scorer.pair_logits(model, text.index(text_idx[s]), image.index(image_idx[s]))[:, 1].float()
        for s in chunks(len(text_idx), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, device=text_idx.device)


def retrieval(
    module,
    inputs: Inputs,
    *,
    batch_size: int,
    max_images: int | None,
    rerank_k: int,
    rerank_rule: str,
    pair_batch_size: int,
    itm_only_max_images: int,
) -> dict[str, float]:
    """Recall@1/5/10 both ways on the split of `inputs`; `Unavailable` when the model cannot score pairs."""
    if rerank_rule not in RERANK_RULES:
        raise ValueError(
            f"eval.retrieval.rerank_rule={rerank_rule!r} is not a rule; use itm (ALBEF: the ITM positive "
            "logit alone) or itm_itc (BLIP: that logit plus the ITC cosine similarity)"
        )
    itc, scorer = embedder(module), pair_scorer(module)
    if itc is None and scorer is None:
        raise Unavailable("needs an objective that scores image-text pairs: itc or itm")
    if scorer is not itc and not isinstance(scorer, ITM):
        raise Unavailable(f"ranks by ITM's positive-class logit; {type(scorer).__name__} has no ITM head")
    reranker = scorer if isinstance(scorer, ITM) else None  # ranks every pair (no ITC) or reranks ITC's top k
    dataset = inputs.dataset
    captions = dataset.captions
    n = len(captions)
    limit = max_images if itc is not None else min(itm_only_max_images, max_images or itm_only_max_images)
    rows = list(range(n if limit is None else min(n, limit)))
    if not rows:
        return {}
    texts = [c for r in rows for c in captions[r]]
    txt2img = torch.tensor([i for i, r in enumerate(rows) for _ in captions[r]], device=inputs.device)
    model = module.model
    N_img, N_txt = len(rows), len(texts)
    out: dict[str, float] = {"retrieval/num_images": float(N_img), "retrieval/num_texts": float(N_txt)}
    with eval_mode(module):
        image = encode_images(model, inputs, rows, batch_size)  # each image once
        text = encode_texts(model, inputs, texts, batch_size)  # each caption once
        if itc is None:  # ITM only: every pair, image-major
            assert reranker is not None  # refused above otherwise
            ii = torch.arange(N_img, device=inputs.device).repeat_interleave(N_txt)  # (N_img*N_txt,)
            tt = torch.arange(N_txt, device=inputs.device).repeat(N_img)
            i2t = match_logits(reranker, model, text, image, tt, ii, pair_batch_size).view(N_img, N_txt)
            return {**out, **{f"retrieval/{k}": v for k, v in recall_metrics(i2t, txt2img).items()}}
        text_emb, image_emb = itc.embed(text.pooled, image.pooled)  # (N_txt, E), (N_img, E)
        sim = (image_emb @ text_emb.T).float()  # (N_img, N_txt) cosine similarities
        sim_t = sim.T.contiguous()  # (N_txt, N_img)
        k_i2t, k_t2i = (0, 0) if reranker is None else (min(rerank_k, N_txt), min(rerank_k, N_img))
        order_i2t = top_indices(sim, max(k_i2t, *KS))  # (N_img, n) the ITC rankings, one sort each
        order_t2i = top_indices(sim_t, max(k_t2i, *KS))  # (N_txt, n')
        by_itc = recall_from_orders(order_i2t, order_t2i, txt2img)
        if reranker is None or k_i2t <= 0:
            return {**out, **{f"retrieval/{k}": v for k, v in by_itc.items()}}
        top_i2t, top_t2i = order_i2t[:, :k_i2t], order_t2i[:, :k_t2i]  # (N_img, k), (N_txt, k')
        pairs, which = candidate_pairs(top_i2t, top_t2i)
        logits = match_logits(reranker, model, text, image, pairs % N_txt, pairs // N_txt, pair_batch_size)
    itm = logits[which]  # (N_img * k + N_txt * k',)
    itm_i2t, itm_t2i = itm[: top_i2t.numel()].view_as(top_i2t), itm[top_i2t.numel() :].view_as(top_t2i)
    itc_i2t, itc_t2i = sim.gather(1, top_i2t), sim_t.gather(1, top_t2i)
    out.update({f"retrieval/itc/{k}": v for k, v in by_itc.items()})
    for rule in RERANK_RULES:
        recalls = recall_from_orders(
            rerank_order(order_i2t, itc_i2t, itm_i2t, rule), rerank_order(order_t2i, itc_t2i, itm_t2i, rule), txt2img
        )
        out.update({f"retrieval/{rule}/{k}": v for k, v in recalls.items()})
        if rule == rerank_rule:
            out.update({f"retrieval/{k}": v for k, v in recalls.items()})
    return out
