"""DNABERT-compatible overlapping k-mer tokenizer, vectorised with numpy.

Token ids follow DNABERT's ``vocab.txt`` exactly (checkpoints depend on it): ids 0-4 are
``[PAD] [UNK] [CLS] [SEP] [MASK]``, then all 4**k k-mers in ``itertools.product("ATCG")`` order.
Because of that order a k-mer's id is ``5 + sum(code_i * 4**(k-1-i))`` with the base codes
A=0, T=1, C=2, G=3, so encoding is a sliding dot product over a byte array, never a dict lookup.
The same base codes are used by the genome cache (``gm.data.genome``), and ``code ^ 1`` is the
complementary base.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from gm.utils import GMError, atomic_write_text

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
NUM_SPECIAL = len(SPECIAL_TOKENS)
BASES = "ATCG"  # DNABERT's order, not alphabetical
INVALID_CODE = 4  # any byte that is not A/C/G/T (either case)

#: byte -> base code (A=0, T=1, C=2, G=3, anything else 4); lower case is the same base.
BYTE_TO_CODE = np.full(256, INVALID_CODE, dtype=np.uint8)
for _code, _base in enumerate(BASES):
    BYTE_TO_CODE[ord(_base)] = _code
    BYTE_TO_CODE[ord(_base.lower())] = _code
CODE_TO_BYTE = np.frombuffer(b"ATCGN", dtype=np.uint8)


@dataclass
class Encoding:
    """A padded batch: ``input_ids`` and ``attention_mask`` of shape (batch, length)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def sequence_to_codes(sequence: str | bytes) -> np.ndarray:
    """Base codes (uint8, 0-3, 4 = not ACGT) of a raw sequence."""
    raw = sequence.encode("ascii", "replace") if isinstance(sequence, str) else sequence
    return BYTE_TO_CODE[np.frombuffer(raw, dtype=np.uint8)]


def kmer_text_to_sequence(text: str) -> str:
    """Raw sequence behind space-separated overlapping k-mers: first k-mer + last letter of the rest."""
    kmers = text.split()
    if not kmers:
        return ""
    return kmers[0] + "".join(kmer[-1] for kmer in kmers[1:])


class KmerTokenizer:
    """Overlapping k-mer tokenizer (stride 1) with DNABERT's vocabulary, for k = 3..6.

    ``max_length`` counts positions including ``[CLS]`` and ``[SEP]`` (512 for BERT), so a
    sequence yields at most ``max_length - 2`` k-mers; longer input is an error unless
    ``truncation=True`` is passed.
    """

    def __init__(self, k: int = 6, max_length: int = 512) -> None:
        if not 3 <= k <= 6:
            raise GMError(f"k must be between 3 and 6, got k={k}")
        if max_length < 3:
            raise GMError(f"max_length must be at least 3 (CLS, one k-mer, SEP), got {max_length}")
        self.k = k
        self.max_length = max_length
        self.vocab: list[str] = list(SPECIAL_TOKENS) + ["".join(p) for p in itertools.product(BASES, repeat=k)]
        self._token_to_id = {tok: i for i, tok in enumerate(self.vocab)}
        self._powers = (4 ** np.arange(k - 1, -1, -1)).astype(np.int64)
        self._vocab_bytes = np.frombuffer("".join(self.vocab[NUM_SPECIAL:]).encode(), dtype=np.uint8).reshape(-1, k)

    # ----------------------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def max_kmers(self) -> int:
        return self.max_length - 2

    @property
    def max_bases(self) -> int:
        return self.max_kmers + self.k - 1

    pad_id, unk_id, cls_id, sep_id, mask_id = PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID
    num_special = NUM_SPECIAL

    def token_to_id(self, token: str) -> int:
        return self._token_to_id.get(token.upper() if not token.startswith("[") else token, UNK_ID)

    # ----------------------------------------------------------------------------- encoding core
    def kmer_ids_from_codes(self, codes: np.ndarray) -> np.ndarray:
        """k-mer ids of every stride-1 window of a 1-D base-code array (length n - k + 1)."""
        codes = np.asarray(codes)
        n = codes.shape[0] - self.k + 1
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        windows = np.lib.stride_tricks.sliding_window_view(codes, self.k)
        ids = windows.astype(np.int64) @ self._powers + NUM_SPECIAL
        invalid = (windows == INVALID_CODE).any(axis=1) if (codes == INVALID_CODE).any() else None
        if invalid is not None:
            ids[invalid] = UNK_ID
        return ids

    def encode_codes(
        self, codes: np.ndarray, lengths: np.ndarray, *, truncation: bool = False, pad_to: int | None = None
    ) -> Encoding:
        """Encode a batch given as concatenated base codes and per-sequence lengths (in bases).

        All sequences are processed in one pass over the concatenation: k-mer ids are computed
        for every window and scattered into the padded ``[CLS] … [SEP]`` matrix; the windows that
        straddle two sequences are never gathered.
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        n_kmers = np.maximum(lengths - self.k + 1, 0)
        if (n_kmers > self.max_kmers).any():
            if not truncation:
                i = int(np.argmax(n_kmers > self.max_kmers))
                raise GMError(
                    f"sequence {i} has {lengths[i]} bases = {n_kmers[i]} {self.k}-mers, more than the "
                    f"{self.max_kmers} that {self.max_length} positions hold (pass truncation=True to cut it)"
                )
            n_kmers = np.minimum(n_kmers, self.max_kmers)
        batch = lengths.shape[0]
        width = int(n_kmers.max(initial=0)) + 2 if pad_to is None else pad_to
        ids = np.zeros((batch, width), dtype=np.int64)
        ids[:, 0] = CLS_ID
        all_ids = self.kmer_ids_from_codes(codes)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1])) if batch else np.zeros(0, dtype=np.int64)
        total = int(n_kmers.sum())
        if total:
            row = np.repeat(np.arange(batch), n_kmers)
            within = np.arange(total) - np.repeat(np.cumsum(n_kmers) - n_kmers, n_kmers)
            ids[row, 1 + within] = all_ids[np.repeat(starts, n_kmers) + within]
        ids[np.arange(batch), 1 + n_kmers] = SEP_ID
        attention = (np.arange(width)[None, :] < (n_kmers + 2)[:, None]).astype(np.int64)
        return Encoding(torch.from_numpy(ids), torch.from_numpy(attention))

    # ----------------------------------------------------------------------------- public encoders
    def encode(self, sequences: Sequence[str] | str, *, truncation: bool = False, pad_to: int | None = None) -> Encoding:
        """Encode raw DNA sequences (any case; non-ACGT k-mers become ``[UNK]``)."""
        if isinstance(sequences, str):
            sequences = [sequences]
        raw = [s.encode("ascii", "replace") for s in sequences]
        lengths = np.fromiter((len(r) for r in raw), dtype=np.int64, count=len(raw))
        codes = BYTE_TO_CODE[np.frombuffer(b"".join(raw), dtype=np.uint8)]
        return self.encode_codes(codes, lengths, truncation=truncation, pad_to=pad_to)

    def encode_kmer_text(
        self, texts: Sequence[str] | str, *, truncation: bool = False, pad_to: int | None = None
    ) -> Encoding:
        """Encode whitespace-separated k-mer text (the benchmark files' format).

        Each token is looked up as a whole, like ``BertTokenizer`` with this vocabulary: a k-mer
        of the right length maps to its id (lower case accepted), a special token to its id,
        anything else to ``[UNK]``.
        """
        if isinstance(texts, str):
            texts = [texts]
        token_lists = [t.split() for t in texts]
        counts = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
        if (counts > self.max_kmers).any() and not truncation:
            i = int(np.argmax(counts > self.max_kmers))
            raise GMError(f"text {i} has {counts[i]} tokens, more than the {self.max_kmers} that fit in {self.max_length} positions")
        flat = [tok for toks in token_lists for tok in toks]
        token_ids = self._lookup_tokens(flat)
        counts_kept = np.minimum(counts, self.max_kmers)
        batch = len(token_lists)
        width = int(counts_kept.max(initial=0)) + 2 if pad_to is None else pad_to
        ids = np.zeros((batch, width), dtype=np.int64)
        ids[:, 0] = CLS_ID
        total = int(counts_kept.sum())
        if total:
            row = np.repeat(np.arange(batch), counts_kept)
            within = np.arange(total) - np.repeat(np.cumsum(counts_kept) - counts_kept, counts_kept)
            source = np.repeat(np.cumsum(counts) - counts, counts_kept) + within
            ids[row, 1 + within] = token_ids[source]
        ids[np.arange(batch), 1 + counts_kept] = SEP_ID
        attention = (np.arange(width)[None, :] < (counts_kept + 2)[:, None]).astype(np.int64)
        return Encoding(torch.from_numpy(ids), torch.from_numpy(attention))

    def _lookup_tokens(self, tokens: list[str]) -> np.ndarray:
        """Ids of whole tokens: vectorised for the k-mers, a dict lookup only for odd tokens."""
        if not tokens:
            return np.zeros(0, dtype=np.int64)
        lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
        regular = lengths == self.k
        ids = np.full(len(tokens), UNK_ID, dtype=np.int64)
        if regular.all():
            joined = "".join(tokens).encode("ascii", "replace")
            codes = BYTE_TO_CODE[np.frombuffer(joined, dtype=np.uint8)].reshape(-1, self.k)
        else:
            joined = "".join(t for t, ok in zip(tokens, regular) if ok).encode("ascii", "replace")
            codes = BYTE_TO_CODE[np.frombuffer(joined, dtype=np.uint8)].reshape(-1, self.k)
            for i in np.flatnonzero(~regular):
                ids[i] = self._token_to_id.get(tokens[i], UNK_ID)
        values = codes.astype(np.int64) @ self._powers + NUM_SPECIAL
        values[(codes == INVALID_CODE).any(axis=1)] = UNK_ID
        ids[regular] = values
        if b"[" in joined:  # special tokens such as "[MASK]" can have length k too
            for i in np.flatnonzero(regular):
                if tokens[i].startswith("["):
                    ids[i] = self._token_to_id.get(tokens[i], UNK_ID)
        return ids

    # ----------------------------------------------------------------------------- decoding
    def decode(self, ids: Iterable[int] | torch.Tensor | np.ndarray, *, skip_special: bool = True) -> list[str]:
        """Token strings of a 1-D id sequence."""
        arr = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else list(ids), dtype=np.int64).reshape(-1)
        if skip_special:
            arr = arr[arr >= NUM_SPECIAL]
        return [self.vocab[i] for i in arr]

    def decode_sequence(self, ids: Iterable[int] | torch.Tensor | np.ndarray) -> str:
        """Raw sequence behind a 1-D id sequence of consecutive overlapping k-mers.

        Special and padding tokens are dropped; ``[UNK]`` k-mers contribute ``N``.
        """
        arr = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else list(ids), dtype=np.int64).reshape(-1)
        kmers = arr[(arr >= NUM_SPECIAL) | (arr == UNK_ID)]
        if kmers.size == 0:
            return ""
        letters = np.full((kmers.size, self.k), ord("N"), dtype=np.uint8)
        known = kmers >= NUM_SPECIAL
        letters[known] = self._vocab_bytes[kmers[known] - NUM_SPECIAL]
        out = np.concatenate([letters[0], letters[1:, -1]])
        return out.tobytes().decode("ascii")

    # ----------------------------------------------------------------------------- Hugging Face I/O
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``vocab.txt``, a ``tokenizer.json`` and the configs that transformers loads.

        ``tokenizer.json`` upper-cases a, c, g and t before the vocabulary lookup, so
        ``AutoTokenizer`` (which loads it as a fast tokenizer) maps lower-case k-mers to the same
        ids as this class. ``BertTokenizer.from_pretrained`` rebuilds its own normaliser from
        ``vocab.txt`` (it can only lower-case) and maps them to ``[UNK]``: give it upper case.
        """
        from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
        from tokenizers.models import WordPiece

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "vocab.txt", "\n".join(self.vocab) + "\n")
        backend = Tokenizer(WordPiece({token: i for i, token in enumerate(self.vocab)}, unk_token="[UNK]"))
        bert = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False)
        # BERT's cleaning, then a -> A, c -> C, g -> G, t -> T
        backend.normalizer = normalizers.Sequence([bert] + [normalizers.Replace(base.lower(), base) for base in BASES])
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
        )
        backend.decoder = decoders.WordPiece(prefix="##")
        backend.add_special_tokens([AddedToken(token, special=True) for token in SPECIAL_TOKENS])
        atomic_write_text(directory / "tokenizer.json", backend.to_str())
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",  # AutoTokenizer then keeps tokenizer.json's normaliser
            "do_lower_case": False,
            "do_basic_tokenize": True,
            "tokenize_chinese_chars": False,
            "strip_accents": False,
            "model_max_length": self.max_length,
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
            "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],  # what BertTokenizer returns
            "kmer": self.k,
        }
        atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
        special = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
        atomic_write_text(directory / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, max_length: int | None = None) -> "KmerTokenizer":
        """Load from a directory with a DNABERT ``vocab.txt``; k is read from the vocabulary.

        A vocabulary in another order would silently scramble a checkpoint's embeddings, so
        anything but DNABERT's exact order is an error.
        """
        path = Path(directory) / "vocab.txt"
        if not path.is_file():
            raise GMError(f"{path}: no vocab.txt (expected a DNABERT k-mer vocabulary)")
        tokens = path.read_text().split()
        if len(tokens) <= NUM_SPECIAL:
            raise GMError(f"{path}: only {len(tokens)} tokens, not a k-mer vocabulary")
        k = len(tokens[NUM_SPECIAL])
        if max_length is None:
            config_path = Path(directory) / "tokenizer_config.json"
            config = json.loads(config_path.read_text()) if config_path.is_file() else {}
            max_length = int(config.get("model_max_length", 512))
            if max_length > 100_000:  # transformers' "no limit" sentinel
                max_length = 512
        tokenizer = cls(k=k, max_length=max_length) if 3 <= k <= 6 else None
        if tokenizer is None or tokens != tokenizer.vocab:
            bad = next((i for i, (a, b) in enumerate(zip(tokens, tokenizer.vocab if tokenizer else [])) if a != b), None)
            where = f"line {bad + 1} is {tokens[bad]!r}, expected {tokenizer.vocab[bad]!r}" if bad is not None else f"{len(tokens)} tokens"
            raise GMError(f"{path}: not a DNABERT {k}-mer vocabulary in DNABERT order ({where})")
        return tokenizer

    def __repr__(self) -> str:
        return f"KmerTokenizer(k={self.k}, vocab_size={self.vocab_size}, max_length={self.max_length})"
