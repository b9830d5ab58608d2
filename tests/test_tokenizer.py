"""KmerTokenizer against spec §1, a plain-Python oracle, and Hugging Face's BertTokenizer.

Everything is local: the Hugging Face tokenizers are loaded from a directory written by
``KmerTokenizer.save_pretrained`` (once per module and k, since loading is slow).
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gm.data.tokenizer import KmerTokenizer, kmer_text_to_sequence
from gm.utils import GMError

KS = (3, 4, 5, 6)
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, UNK, CLS, SEP, MASK = range(5)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_TOKENIZERS = {k: KmerTokenizer(k=k) for k in KS}


# ------------------------------------------------------------------------------------------ oracle
def reference_vocab(k: int) -> dict[str, int]:
    """DNABERT's vocabulary written out from the spec, as a dict token -> id."""
    tokens = SPECIALS + ["".join(p) for p in itertools.product("ATCG", repeat=k)]
    return {tok: i for i, tok in enumerate(tokens)}


def reference_encode(sequences: list[str], k: int, max_length: int = 512, truncation: bool = False):
    """The obvious implementation: one dict lookup per k-mer, one list per sequence, then pad."""
    vocab = reference_vocab(k)
    rows = []
    for sequence in sequences:
        sequence = sequence.upper()
        kmers = [sequence[i : i + k] for i in range(len(sequence) - k + 1)]
        if truncation:
            kmers = kmers[: max_length - 2]
        rows.append([CLS] + [vocab.get(kmer, UNK) for kmer in kmers] + [SEP])
    width = max(len(row) for row in rows)
    ids = [row + [PAD] * (width - len(row)) for row in rows]
    attention = [[1] * len(row) + [0] * (width - len(row)) for row in rows]
    return ids, attention


def kmer_text(sequence: str, k: int) -> str:
    return " ".join(sequence[i : i + k] for i in range(len(sequence) - k + 1))


# ------------------------------------------------------------------------------------------ vocabulary
@pytest.mark.parametrize("k", KS)
def test_vocabulary_layout(k):
    tok = _TOKENIZERS[k]
    assert tok.vocab_size == 4**k + 5 == len(tok.vocab)
    assert tok.vocab[:5] == SPECIALS
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.vocab[5:] == ["".join(p) for p in itertools.product("ATCG", repeat=k)]
    assert tok.vocab[5] == "A" * k and tok.vocab[-1] == "G" * k
    assert tok.vocab[6] == "A" * (k - 1) + "T"
    assert tok.vocab[7] == "A" * (k - 1) + "C"
    assert tok.vocab[8] == "A" * (k - 1) + "G"
    assert all(tok.token_to_id(t) == i for t, i in reference_vocab(k).items())


def test_vocabulary_k6_ids():
    tok = _TOKENIZERS[6]
    assert tok.vocab_size == 4101
    assert [tok.token_to_id(t) for t in ("AAAAAA", "AAAAAT", "AAAAAC", "AAAAAG", "GGGGGG")] == [5, 6, 7, 8, 4100]
    assert tok.encode("AAAAAAT").input_ids.tolist() == [[CLS, 5, 6, SEP]]
    assert tok.encode("GGGGGG").input_ids.tolist() == [[CLS, 4100, SEP]]


@pytest.mark.parametrize("k", [2, 7])
def test_k_out_of_range(k):
    with pytest.raises(GMError, match="k must be between 3 and 6"):
        KmerTokenizer(k=k)


# ------------------------------------------------------------------------------------------ encode vs oracle
sequences = st.text(alphabet="ACGTacgtNRY", max_size=40)
acgt = st.text(alphabet="ACGT", max_size=60)


@FAST
@given(k=st.sampled_from(KS), batch=st.lists(sequences, min_size=1, max_size=6))
def test_encode_matches_reference(k, batch):
    encoding = _TOKENIZERS[k].encode(batch)
    ids, attention = reference_encode(batch, k)
    assert encoding.input_ids.dtype == torch.int64
    assert encoding.input_ids.tolist() == ids
    assert encoding.attention_mask.tolist() == attention


@FAST
@given(k=st.sampled_from(KS), batch=st.lists(sequences, min_size=1, max_size=4), max_length=st.integers(3, 12))
def test_truncation_matches_reference(k, batch, max_length):
    tok = KmerTokenizer(k=k, max_length=max_length)
    encoding = tok.encode(batch, truncation=True)
    ids, attention = reference_encode(batch, k, max_length, truncation=True)
    assert encoding.input_ids.tolist() == ids
    assert encoding.attention_mask.tolist() == attention
    assert encoding.input_ids.shape[1] <= max_length


def test_encode_single_string_and_short_input():
    tok = _TOKENIZERS[6]
    assert tok.encode("ACGTACG").input_ids.tolist() == tok.encode(["ACGTACG"]).input_ids.tolist()
    encoding = tok.encode(["", "ACG", "ACGTAC"])
    assert encoding.input_ids.tolist() == [[CLS, SEP, PAD], [CLS, SEP, PAD], [CLS, tok.token_to_id("ACGTAC"), SEP]]
    assert encoding.attention_mask.tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 1]]


def test_pad_to():
    tok = _TOKENIZERS[3]
    encoding = tok.encode(["ACGT", "A"], pad_to=8)
    assert encoding.input_ids.shape == (2, 8)
    assert encoding.input_ids.tolist()[1] == [CLS, SEP] + [PAD] * 6
    assert encoding.attention_mask.sum().item() == 4 + 2


# ------------------------------------------------------------------------------------------ round trips
@FAST
@given(k=st.sampled_from(KS), data=st.data())
def test_round_trips(k, data):
    seq = data.draw(st.text(alphabet="ACGTacgt", min_size=k, max_size=80))
    tok = _TOKENIZERS[k]
    ids = tok.encode(seq).input_ids[0]
    assert tok.decode_sequence(ids) == seq.upper()
    text = kmer_text(seq, k)
    assert torch.equal(tok.encode_kmer_text(text).input_ids, tok.encode(seq).input_ids)
    assert kmer_text_to_sequence(text) == seq
    assert tok.decode(ids) == text.upper().split()
    assert torch.equal(tok.encode(seq.lower()).input_ids, tok.encode(seq.upper()).input_ids)


def test_decode_sequence_unk_is_n_and_skips_padding():
    tok = _TOKENIZERS[3]
    ids = tok.encode(["ACGNTTA", "A"]).input_ids
    # every [UNK] k-mer contributes one N (its last base is unknown), so bases inside k-1 of an N are lost
    assert tok.decode_sequence(ids[0]) == "ACGNNNA"
    assert tok.decode_sequence(ids[1]) == ""
    assert kmer_text_to_sequence("") == ""


@pytest.mark.parametrize("k", KS)
def test_non_acgt_kmers_are_unk(k):
    tok = _TOKENIZERS[k]
    rng = random.Random(k)
    for _ in range(50):
        kmer = [rng.choice("ACGTacgt") for _ in range(k)]
        kmer[rng.randrange(k)] = rng.choice("NRYKMSWnryx-.")
        kmer = "".join(kmer)
        assert tok.encode(kmer).input_ids.tolist() == [[CLS, UNK, SEP]], kmer
        assert tok.encode_kmer_text(kmer).input_ids.tolist() == [[CLS, UNK, SEP]], kmer
        assert tok.token_to_id(kmer) == UNK


def test_non_ascii_is_unk():
    tok = _TOKENIZERS[3]
    assert tok.encode("ACé").input_ids.tolist() == [[CLS, UNK, SEP]]
    assert tok.encode_kmer_text("ACé ACG").input_ids.tolist() == [[CLS, UNK, tok.token_to_id("ACG"), SEP]]


# ------------------------------------------------------------------------------------------ k-mer text
@pytest.mark.parametrize("k", KS)
def test_kmer_text_special_and_odd_tokens(k):
    tok = _TOKENIZERS[k]
    good = "A" * k
    text = f"{good} [MASK] [CLS] [SEP] [PAD] [UNK] {good[:-1]} {good}A {good.lower()} [mask] [FOO]"
    expected = [CLS, 5, MASK, CLS, SEP, PAD, UNK, UNK, UNK, 5, UNK, UNK, SEP]
    assert tok.encode_kmer_text(text).input_ids.tolist() == [expected]


@FAST
@given(k=st.sampled_from(KS), batch=st.lists(sequences, min_size=1, max_size=5))
def test_kmer_text_matches_encode(k, batch):
    tok = _TOKENIZERS[k]
    texts = [kmer_text(s, k) for s in batch]
    ours = tok.encode_kmer_text(texts)
    ids, attention = reference_encode(batch, k)
    assert ours.input_ids.tolist() == ids
    assert ours.attention_mask.tolist() == attention


# ------------------------------------------------------------------------------------------ lengths
@pytest.mark.parametrize("k", KS)
def test_too_long_raises_unless_truncation(k):
    tok = KmerTokenizer(k=k, max_length=10)  # 8 k-mers = 8 + k - 1 bases fit
    fits = "ACGT" * 10
    fits = fits[: 8 + k - 1]
    long = fits + "A"
    tok.encode([fits])  # exactly full: no error
    with pytest.raises(GMError, match=r"sequence 2 .*truncation=True"):
        tok.encode([fits, "ACGTACGT", long])
    truncated = tok.encode([fits, long], truncation=True)
    assert truncated.input_ids.shape == (2, 10)
    assert torch.equal(truncated.input_ids[1], tok.encode(fits).input_ids[0])
    texts = [kmer_text(fits, k), kmer_text(long, k)]
    with pytest.raises(GMError, match=r"text 1 "):
        tok.encode_kmer_text(texts)
    assert torch.equal(tok.encode_kmer_text(texts, truncation=True).input_ids, truncated.input_ids)


def test_default_capacity_is_510_kmers():
    tok = _TOKENIZERS[6]
    assert (tok.max_kmers, tok.max_bases) == (510, 515)
    seq = "".join(random.Random(0).choice("ACGT") for _ in range(515))
    assert tok.encode(seq).input_ids.shape == (1, 512)
    with pytest.raises(GMError, match="sequence 0"):
        tok.encode(seq + "A")


# ------------------------------------------------------------------------------------------ Hugging Face
class _HF:
    """Per-module cache of (directory, BertTokenizer, AutoTokenizer) per k."""

    def __init__(self, factory):
        self.factory = factory
        self.cache: dict[int, tuple] = {}

    def __getitem__(self, k: int):
        if k not in self.cache:
            transformers = pytest.importorskip("transformers")
            directory = self.factory.mktemp(f"hf-k{k}")
            _TOKENIZERS[k].save_pretrained(directory)
            self.cache[k] = (
                directory,
                transformers.BertTokenizer.from_pretrained(str(directory), local_files_only=True),
                transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True),
            )
        return self.cache[k]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return _HF(tmp_path_factory)


def kmer_texts(k: int):
    token = st.one_of(
        st.text(alphabet="ACGT", min_size=k, max_size=k),
        st.sampled_from(["[MASK]", "[CLS]", "[UNK]"]),
        st.text(alphabet="ACGT", min_size=1, max_size=k + 2),  # mostly wrong lengths: [UNK]
    )
    return st.lists(st.lists(token, max_size=12).map(" ".join), min_size=1, max_size=4)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.parametrize("k", KS)
def test_hf_tokenizers_agree(hf, k, data):
    texts = data.draw(kmer_texts(k))
    _, bert, auto = hf[k]
    ours = _TOKENIZERS[k].encode_kmer_text(texts)
    for theirs in (bert, auto):
        out = theirs(texts, padding=True)
        assert out["input_ids"] == ours.input_ids.tolist(), type(theirs)
        assert out["attention_mask"] == ours.attention_mask.tolist(), type(theirs)


@pytest.mark.parametrize("k", KS)
def test_from_pretrained_round_trip(hf, k, tmp_path):
    directory, bert, _ = hf[k]
    loaded = KmerTokenizer.from_pretrained(directory)
    assert (loaded.k, loaded.max_length, loaded.vocab) == (k, 512, _TOKENIZERS[k].vocab)
    assert bert.vocab_size == loaded.vocab_size
    assert KmerTokenizer.from_pretrained(directory, max_length=40).max_length == 40
    small = KmerTokenizer(k=k, max_length=64).save_pretrained(tmp_path / "small")
    assert KmerTokenizer.from_pretrained(small).max_length == 64


def test_from_pretrained_rejects_other_order(tmp_path):
    tok = _TOKENIZERS[4]
    tok.save_pretrained(tmp_path)
    alphabetical = tok.vocab[:5] + sorted(tok.vocab[5:])
    (tmp_path / "vocab.txt").write_text("\n".join(alphabetical) + "\n")
    with pytest.raises(GMError, match=r"vocab\.txt.*DNABERT order.*line 7"):
        KmerTokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(tok.vocab[:5] + ["A" * 7, "A" * 6]) + "\n")
    with pytest.raises(GMError, match=r"vocab\.txt"):
        KmerTokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    with pytest.raises(GMError, match=r"vocab\.txt"):
        KmerTokenizer.from_pretrained(tmp_path)


def test_from_pretrained_missing_vocab(tmp_path):
    with pytest.raises(GMError, match=rf"{tmp_path.name}.*vocab\.txt"):
        KmerTokenizer.from_pretrained(tmp_path)


def test_kmer_ids_from_codes():
    tok = _TOKENIZERS[6]
    codes = np.array([0, 1, 2, 3, 0, 1, 4, 3], dtype=np.uint8)
    assert tok.kmer_ids_from_codes(codes).tolist() == [
        tok.token_to_id("ATCGAT"), UNK, UNK,
    ]
    assert tok.kmer_ids_from_codes(codes[:5]).size == 0


def mixed_case_kmer_texts(k: int):
    token = st.one_of(
        st.text(alphabet="ACGTacgt", min_size=k, max_size=k),
        st.text(alphabet="ACGTacgtNn", min_size=k, max_size=k),  # n: [UNK] either way
        st.sampled_from(["[MASK]", "[CLS]", "[UNK]"]),
    )
    return st.lists(st.lists(token, max_size=12).map(" ".join), min_size=1, max_size=4)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.parametrize("k", KS)
def test_auto_tokenizer_agrees_on_lower_case(hf, k, data):
    """The exported tokenizer.json upper-cases, as KmerTokenizer does: AutoTokenizer used to map
    lower-case k-mers to [UNK]. (BertTokenizer.from_pretrained still does: it ignores tokenizer.json's
    normaliser; the README says to give it upper case.)"""
    texts = data.draw(mixed_case_kmer_texts(k))
    directory, _, auto = hf[k]
    ours = _TOKENIZERS[k].encode_kmer_text(texts)
    out = auto(texts, padding=True)
    assert out["input_ids"] == ours.input_ids.tolist()
    assert out["attention_mask"] == ours.attention_mask.tolist()
    assert list(out) == ["input_ids", "token_type_ids", "attention_mask"]  # as BertTokenizer returns
    assert auto(["acgtac"[:k]])["input_ids"][0][1] == _TOKENIZERS[k].token_to_id("ACGTAC"[:k]) != 1
