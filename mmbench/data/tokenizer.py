"""Text tokenizers: WordPiece trained on the dataset's text, or a pretrained HF tokenizer.

Both come out as a `tokenizers.Tokenizer` (the Rust fast tokenizer: `encode_batch` returns
encodings with `.ids` / `.attention_mask`) plus its `SpecialIds`, so the collator and every
objective treat them the same way.

* `kind="trained"` (the Shapes default): WordPiece over the training text's words and characters, built
  deterministically (`train_wordpiece`) and saved as `tokenizer-<vocab_size>.json` beside the cached
  dataset, so every run on the same data uses the same ids, also with a fresh cache. For real data with
  a large vocabulary, a pretrained tokenizer (`kind="hf"`) splits rare words into better pieces.
* `kind="hf"`: a pretrained tokenizer by hub id or local path (a directory written by
  `save_pretrained`, a directory holding `tokenizer.json`, or a `tokenizer.json` file). Hub ids load
  from the local HF cache only when offline; nothing is downloaded in tests.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

log = logging.getLogger(__name__)

PAD, UNK, CLS, SEP, MASK, BOS, EOS = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK, BOS, EOS]  # ids 0..6 in this order
KINDS = ("trained", "hf")


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded or lacks a token the data needs."""


@dataclass(frozen=True)
class SpecialIds:
    """Ids the datamodule and the objectives need (padding, MLM mask, LM start/end, all specials)."""

    pad: int
    mask: int
    bos: int
    eos: int
    all: tuple[int, ...]


# --------------------------------------------------------------------------- trained WordPiece


def train_wordpiece(texts: Iterable[str], vocab_size: int = 1000) -> Tokenizer:
    """A WordPiece tokenizer of the data's words, built deterministically (the same texts give the same ids in
    every process):

        ids 0..6     the special tokens (`SPECIAL_TOKENS`)
        then         every character of the text, as a word start ("c") and as a continuation ("##c"), sorted
        then         whole words (BERT-normalised, lower-cased) by frequency, ties alphabetical, while the
                     vocabulary has fewer than `vocab_size` entries

    Text of the data tokenizes to whole words; a word outside the vocabulary (a typo, a count word the
    captions never use) to its characters. The alphabet is always kept, so a tiny `vocab_size` is
    exceeded by it (as `tokenizers`' trainer does).

    Built here instead of with `tokenizers.trainers.WordPieceTrainer` because that trainer is not
    deterministic: it numbers the continuation pieces in hash-map order and breaks ties between equally
    frequent merges by those numbers, so two processes trained on the same texts give different ids and
    different merges (huggingface/tokenizers#1794, open). Here that made the tokenisation of unseen words,
    and with it robustness and hard-negative metrics, differ between two runs of the same code with fresh
    caches. The WordPiece model, normaliser, pre-tokeniser and decoder are still `tokenizers`'.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    vocab = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    known = set(vocab)
    by_frequency = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))
    words = [w for w, _ in by_frequency if w not in known]
    vocab += words[: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=UNK))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(SPECIAL_TOKENS)  # never split, skipped when decoding
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", special_tokens=[(CLS, tok.token_to_id(CLS)), (SEP, tok.token_to_id(SEP))]
    )
    return tok


def load_or_train(path: str | os.PathLike, texts: Iterable[str], vocab_size: int = 1000) -> Tokenizer:
    """Load the tokenizer at `path`, or train it on `texts` and save it there (atomically).

    A file that does not load (truncated, not a tokenizer) is retrained and replaced, with a warning.
    """
    path = Path(path)
    if path.exists():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as err:  # `tokenizers` raises a bare Exception for a bad file
            why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.warning("the cached tokenizer %s does not load (%s); training it again", path, why)
    tok = train_wordpiece(texts, vocab_size)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, path)
    return tok


def _id(tok: Tokenizer, token: str) -> int:
    """The id of a token the tokenizer has (a special token it was trained or extended with)."""
    i = tok.token_to_id(token)
    if i is None:
        raise TokenizerError(f"the tokenizer has no token {token!r}")
    return i


def trained_special_ids(tok: Tokenizer) -> SpecialIds:
    ids = {t: _id(tok, t) for t in SPECIAL_TOKENS}
    return SpecialIds(pad=ids[PAD], mask=ids[MASK], bos=ids[BOS], eos=ids[EOS], all=tuple(ids.values()))


# --------------------------------------------------------------------------- pretrained HF tokenizers

# names of special tokens in common tokenizer.json files (BERT, RoBERTa/CLIP/GPT-2, T5), first match wins
_PAD_NAMES = ("[PAD]", "<pad>", "<|pad|>")
_MASK_NAMES = ("[MASK]", "<mask>")
_BOS_NAMES = ("[CLS]", "<s>", "<|startoftext|>", "<|endoftext|>", "[BOS]")
_EOS_NAMES = ("[SEP]", "</s>", "<|endoftext|>", "[EOS]")


def load_pretrained(name_or_path: str, offline: bool = False) -> Tokenizer:
    """A pretrained fast tokenizer from a local path or a hub id (from the HF cache when offline).

    Local: a `tokenizer.json` file, or a directory holding one (written by `tokenizers` or by
    `save_pretrained`). Otherwise `transformers.AutoTokenizer` (fast) resolves the name, which for a
    hub id needs the HF cache or the network.
    """
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_file():
        return Tokenizer.from_file(str(path))
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    if path.is_dir() or str(name_or_path).startswith((".", "/", "~")):
        if not path.exists():
            raise TokenizerError(f"tokenizer path {str(path)!r} does not exist")
        return _auto_tokenizer(str(path), local_files_only=True)
    from mmbench.data.hf.hub_access import hub_access

    with hub_access(str(name_or_path), offline=offline, what="tokenizer") as local_only:
        return _auto_tokenizer(str(name_or_path), local_files_only=local_only)


def _auto_tokenizer(name: str, local_files_only: bool) -> Tokenizer:
    try:
        from transformers import AutoTokenizer
    except ImportError as err:  # pragma: no cover - transformers is a dependency
        raise TokenizerError(f"loading tokenizer {name!r} needs `transformers` ({err})") from err
    try:
        hf = AutoTokenizer.from_pretrained(name, use_fast=True, local_files_only=local_files_only)
    except OSError as err:
        where = "in the local HF cache" if local_files_only else "locally or on the hub"
        raise TokenizerError(f"cannot load tokenizer {name!r}: not found {where} ({_first_line(err)})") from err
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"tokenizer {name!r} has no fast (Rust `tokenizers`) version; mmbench needs one")
    # AutoTokenizer knows the special tokens by role; make sure the backend marks them special too
    roles = {r: getattr(hf, f"{r}_token", None) for r in ("pad", "mask", "cls", "sep", "bos", "eos")}
    backend.add_special_tokens([AddedToken(t, special=True) for t in roles.values() if t])
    return backend


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def pretrained_special_ids(tok: Tokenizer, name: str = "tokenizer") -> SpecialIds:
    """Special ids of a pretrained tokenizer; adds [PAD] / [MASK] when it has none (GPT-2 style).

    BERT-style tokenizers: bos = [CLS], eos = [SEP] (the LM objective starts from bos and stops at eos).
    """
    specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}

    def find(names: tuple[str, ...]) -> str | None:
        return next((n for n in names if n in specials and tok.token_to_id(n) is not None), None)

    pad, mask = find(_PAD_NAMES), find(_MASK_NAMES)
    for role, token, default in (("padding", pad, PAD), ("mask", mask, MASK)):
        if token is None:
            tok.add_special_tokens([AddedToken(default, special=True)])
            log.warning(
                "%s has no %s token; added %s as id %d (the vocabulary grows by one)",
                name,
                role,
                default,
                tok.token_to_id(default),
            )
    pad, mask = pad or PAD, mask or MASK
    bos, eos = find(_BOS_NAMES), find(_EOS_NAMES)
    if bos is None or eos is None:
        raise TokenizerError(
            f"{name} has no start/end tokens among {sorted(specials)}; expected one of "
            f"{list(_BOS_NAMES)} and one of {list(_EOS_NAMES)}"
        )
    all_ids = sorted({_id(tok, t) for t in specials | {pad, mask}})
    return SpecialIds(
        pad=_id(tok, pad),
        mask=_id(tok, mask),
        bos=_id(tok, bos),
        eos=_id(tok, eos),
        all=tuple(all_ids),
    )


# --------------------------------------------------------------------------- one entry point


def build(
    kind: str,
    *,
    cache_dir: str | os.PathLike,
    texts,
    vocab_size: int,
    max_len: int,
    name_or_path: str | None = None,
    offline: bool = False,
) -> tuple[Tokenizer, SpecialIds]:
    """The run's tokenizer (configured to pad and truncate) and its special ids.

    texts: a callable returning an iterable of training texts (only called when a tokenizer is trained).
    """
    if kind == "trained":
        if name_or_path:
            raise TokenizerError(
                f"data.tokenizer.name_or_path={name_or_path!r} is set but kind='trained'; "
                f"use data/tokenizer=hf to load a pretrained tokenizer"
            )
        tok = load_or_train(Path(cache_dir) / f"tokenizer-{vocab_size}.json", texts(), vocab_size)
        special = trained_special_ids(tok)
    elif kind == "hf":
        if not name_or_path:
            raise TokenizerError(
                "data.tokenizer.kind='hf' needs data.tokenizer.name_or_path "
                "(a hub id such as bert-base-uncased, or a local directory / tokenizer.json)"
            )
        tok = load_pretrained(str(name_or_path), offline=offline)
        special = pretrained_special_ids(tok, f"tokenizer {name_or_path!r}")
    else:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; valid kinds: {list(KINDS)}")
    return configure(tok, max_len, special), special


def configure(tok: Tokenizer, max_len: int, special: SpecialIds | None = None) -> Tokenizer:
    """Pad to the longest sequence of a batch and truncate to `max_len` tokens (specials included)."""
    pad_id = special.pad if special is not None else _id(tok, PAD)
    tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id))
    tok.enable_truncation(max_length=max_len)
    return tok
