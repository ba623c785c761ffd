"""Image-text retrieval in both directions: Recall@1/5/10 and their mean (multi-caption protocol).

Protocol (Karpathy-split COCO / Flickr30k, as in ALBEF, BLIP, ViLT):

* image -> text (i2t): an image is retrieved correctly at K if *any* of its captions ranks in the
  top K of all captions; text -> image (t2i): a caption is correct at K if its image is in the top K;
* every image and every caption is encoded once; ranking is by ITC cosine similarity
  (`img_emb @ txt_emb.T`, one matrix product);
* a model that also has a higher-ranked pair scorer (ITM on a fusion) re-ranks the top `rerank_k`
  candidates of every query by the ITM log-odds, in batches of pairs (ALBEF / BLIP); candidates
  outside the top k keep their ITC order behind them;
* a model without ITC (e.g. ViLT trained with ITM only) scores *every* pair with ITM in batches,
  on at most `itm_only_max_images` images (and their captions): that is N_img x N_txt fusions.

Recall@K of one direction equals torchmetrics' `RetrievalHitRate(top_k=K)` with the query as the
group (tests/test_metrics.py checks this); it is computed here from one ranking per direction. Equal
scores (e.g. identical blank images under the `blank_image` robustness condition) rank in gallery
order, whatever the thread count (`top_indices`).

Names (prefixed with the split by the suite): `retrieval/i2t_r{1,5,10}`, `retrieval/t2i_r{1,5,10}`,
`retrieval/rmean`, `retrieval/num_images`, `retrieval/num_texts` (the gallery); with re-ranking also
`retrieval/itc/...` (the ITC ranking before re-ranking).
"""

from __future__ import annotations

import torch

from mmbench.metrics.common import (
    Inputs,
    Unavailable,
    chunks,
    column,
    embedder,
    encode_images,
    encode_texts,
    eval_mode,
    pair_scorer,
)

KS = (1, 5, 10)


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k best columns of each row, (Q, k); equal scores in column order. `topk` orders ties as its
    kernel happens to (it differed between thread counts on identical blank images, so mmbench-eval
    disagreed with the end-of-training numbers); a stable sort makes the ranking a function of the scores."""
    return scores.sort(dim=1, descending=True, stable=True).indices[:, :k]


def hits_at_k(scores: torch.Tensor, query_ids: torch.Tensor, doc_ids: torch.Tensor, ks=KS) -> dict[int, torch.Tensor]:
    """Per query, whether a relevant document is in the top K (a document is relevant to a query
    when their ids are equal). scores (Q, D); query_ids (Q,); doc_ids (D,). Returns {K: (Q,) bool}."""
    kmax = min(max(ks), scores.shape[1])
    top = top_indices(scores, kmax)  # (Q, kmax)
    hit = doc_ids[top] == query_ids[:, None]  # (Q, kmax)
    first = hit.cumsum(1) > 0  # (Q, kmax): a relevant document at rank <= r
    return {k: first[:, min(k, kmax) - 1] for k in ks}


def recall_metrics(
    i2t: torch.Tensor, txt2img: torch.Tensor, t2i: torch.Tensor | None = None, ks=KS
) -> dict[str, float]:
    """Recall@K both ways from score matrices i2t (N_img, N_txt) and t2i (N_txt, N_img; default i2t.T).

    txt2img (N_txt,): the image (row index of i2t) of each caption.
    """
    t2i = i2t.T if t2i is None else t2i
    images = torch.arange(i2t.shape[0], device=i2t.device)
    out = {}
    for name, (scores, q, d) in {"i2t": (i2t, images, txt2img), "t2i": (t2i, txt2img, images)}.items():
        for k, hit in hits_at_k(scores, q, d, ks).items():
            out[f"{name}_r{k}"] = hit.float().mean().item()
    out["rmean"] = sum(out.values()) / len(out)
    return out


@torch.no_grad()
def score_pairs(
    scorer, model, text, image, text_idx: torch.Tensor, image_idx: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Pair scores (P,) of (text_idx[p], image_idx[p]), fused in batches of `batch_size` pairs."""
    out = [
        scorer.pair_score(model, text.index(text_idx[s]), image.index(image_idx[s])).float()
        for s in chunks(len(text_idx), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0)


def rerank(scores: torch.Tensor, k: int, score_fn) -> torch.Tensor:
    """Replace the top-k scores of each row by score_fn(rows, cols) and put them ahead of the rest.

    scores (Q, D) first-stage scores; score_fn(q_idx (P,), d_idx (P,)) -> (P,) second-stage scores.
    The rest keep their first-stage order behind the top k (shifted down by a large constant).
    """
    Q, D = scores.shape
    k = min(k, D)
    top = top_indices(scores, k)  # (Q, k)
    rows = torch.arange(Q, device=scores.device)[:, None].expand(Q, k)  # (Q, k)
    second = score_fn(rows.reshape(-1), top.reshape(-1)).to(scores)  # (Q*k,)
    out = scores - (second.abs().max() + scores.abs().max() + 1.0) * 2  # every non-candidate below every candidate
    out[rows.reshape(-1), top.reshape(-1)] = second
    return out


def retrieval(
    module,
    inputs: Inputs,
    *,
    batch_size: int,
    max_images: int | None,
    rerank_k: int,
    pair_batch_size: int,
    itm_only_max_images: int,
) -> dict[str, float]:
    """Recall@1/5/10 both ways on the split of `inputs`; `Unavailable` when the model cannot score pairs."""
    itc, scorer = embedder(module), pair_scorer(module)
    if itc is None and scorer is None:
        raise Unavailable("needs an objective that scores image-text pairs: itc or itm")
    dataset = inputs.dataset
    captions = column(dataset, "captions")
    n = len(captions)
    limit = max_images if itc is not None else min(itm_only_max_images, max_images or itm_only_max_images)
    rows = list(range(n if limit is None else min(n, limit)))
    if not rows:
        return {}
    texts = [c for r in rows for c in captions[r]]
    txt2img = torch.tensor([i for i, r in enumerate(rows) for _ in captions[r]], device=inputs.device)
    model = module.model
    out: dict[str, float] = {"retrieval/num_images": float(len(rows)), "retrieval/num_texts": float(len(texts))}
    with eval_mode(module):
        image = encode_images(model, inputs, rows, batch_size)  # each image once
        text = encode_texts(model, inputs, texts, batch_size)  # each caption once
        if itc is not None:
            text_emb, image_emb = itc.embed(text.pooled, image.pooled)  # (N_txt, E), (N_img, E)
            sim = (image_emb @ text_emb.T).float()  # (N_img, N_txt)
            if scorer is itc or rerank_k <= 0:
                return {**out, **{f"retrieval/{k}": v for k, v in recall_metrics(sim, txt2img).items()}}
            out.update({f"retrieval/itc/{k}": v for k, v in recall_metrics(sim, txt2img).items()})
            i2t = rerank(sim, rerank_k, lambda q, d: score_pairs(scorer, model, text, image, d, q, pair_batch_size))
            t2i = rerank(
                sim.T.contiguous(),
                rerank_k,
                lambda q, d: score_pairs(scorer, model, text, image, q, d, pair_batch_size),
            )
        else:  # ITM only: every pair
            N_img, N_txt = len(rows), len(texts)
            ii = torch.arange(N_img, device=inputs.device).repeat_interleave(N_txt)  # (N_img*N_txt,)
            tt = torch.arange(N_txt, device=inputs.device).repeat(N_img)
            i2t = score_pairs(scorer, model, text, image, tt, ii, pair_batch_size).view(N_img, N_txt)
            t2i = None
    out.update({f"retrieval/{k}": v for k, v in recall_metrics(i2t, txt2img, t2i).items()})
    return out
