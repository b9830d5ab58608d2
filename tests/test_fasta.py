"""FASTA reading (plain, gzip, bgzip), clear errors, 2-bit packing, the genome cache and fetch()."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gm.data.fasta as fasta_mod
from gm.data.fasta import GenomeCache, build_or_load_cache, cache_dir_for, fetch, pack, read_fasta, unpack
from gm.utils import GMError

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "genome" / "hg38_chr2_1-2333275.fa.gz"
SAMPLE_LENGTH = 2_333_275

#: the base codes written out by hand (A=0 T=1 C=2 G=3, anything else 4), independent of gm.data.tokenizer
CODE = {"A": 0, "T": 1, "C": 2, "G": 3}
IUPAC = "NRYKMSWBDHV"
LETTERS = "ACGTacgt" + IUPAC + IUPAC.lower()


# ------------------------------------------------------------------------------------------ helpers
def expected_codes(seq: str) -> np.ndarray:
    return np.array([CODE.get(c.upper(), 4) for c in seq], dtype=np.uint8)


def cache_entries(root: Path) -> list[str]:
    """What a cache root or download folder holds, less the lock files that serialise builders (they hold no data)."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def fasta_text(records: list[tuple[str, str]], widths: int | list[int] = 60, newline: str = "\n") -> str:
    """FASTA text; record i is wrapped at widths[i] (a header line may carry a description)."""
    widths = widths if isinstance(widths, list) else [widths] * len(records)
    out = []
    for (header, seq), width in zip(records, widths):
        out.append(f">{header}{newline}")
        out.extend(seq[i : i + width] + newline for i in range(0, len(seq), width))
    return "".join(out)


def reference_parse(data: bytes) -> list[tuple[str, np.ndarray]]:
    """A plain line-by-line FASTA parser, the slow obvious way."""
    records: list[tuple[str, list[np.ndarray]]] = []
    for line in data.decode("ascii").splitlines():
        line = line.strip()
        if line.startswith(">"):
            words = line[1:].split()
            records.append((words[0] if words else "", []))
        elif line:
            records[-1][1].append(expected_codes(line))
    return [(name, np.concatenate(parts) if parts else np.zeros(0, np.uint8)) for name, parts in records]


def parsed(path: Path, chunk_size: int | None = None) -> list[tuple[str, np.ndarray]]:
    kwargs = {} if chunk_size is None else {"chunk_size": chunk_size}
    return [(r.name, r.codes) for r in read_fasta(path, progress=False, **kwargs)]


def assert_same(got: list[tuple[str, np.ndarray]], want: list[tuple[str, np.ndarray]]) -> None:
    assert [name for name, _ in got] == [name for name, _ in want]
    for (name, a), (_, b) in zip(got, want):
        assert a.dtype == np.uint8, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def bgzip(data: bytes, cuts: list[int]) -> bytes:
    """Multi-member gzip, as bgzip writes it: independent members plus an empty end-of-file member."""
    bounds = [0, *cuts, len(data)]
    return b"".join(gzip.compress(data[a:b]) for a, b in zip(bounds, bounds[1:])) + gzip.compress(b"")


def random_records(rng: np.random.Generator, lengths: list[int], letters: str = LETTERS) -> list[tuple[str, str]]:
    return [(f"rec{i} description {i}\tmore", "".join(rng.choice(list(letters), n))) for i, n in enumerate(lengths)]


# ------------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize("chunk_size", [7, 64, None])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_multi_record_wrapped_against_reference(tmp_path, chunk_size, newline):
    rng = np.random.default_rng(1)
    records = random_records(rng, [500, 0, 1, 333, 1000, 0])
    text = fasta_text(records, widths=[60, 70, 5, 1, 80, 60], newline=newline)
    path = tmp_path / "multi.fa"
    path.write_bytes(text.encode())
    got = parsed(path, chunk_size)
    assert_same(got, reference_parse(text.encode()))
    # the same, written down directly from the generated strings
    assert_same(got, [(f"rec{i}", expected_codes(seq)) for i, (_, seq) in enumerate(records)])


def test_ragged_lines_blank_lines_and_no_final_newline(tmp_path):
    text = b"\n\n>a  x\nAC\nGTA\n\nC\n   \n>b\r\nTT\tGG \r\n>c\nA"
    path = tmp_path / "ragged.fa"
    path.write_bytes(text)
    for chunk_size in (1, 3, 7, None):
        want = [("a", expected_codes("ACGTAC")), ("b", expected_codes("TTGG")), ("c", expected_codes("A"))]
        assert_same(parsed(path, chunk_size), want)


def test_soft_masked_lower_case_is_the_same_base(tmp_path):
    seq = "ACGTNacgtnRYry"
    (tmp_path / "upper.fa").write_text(f">s\n{seq.upper()}\n")
    (tmp_path / "lower.fa").write_text(f">s\n{seq.lower()}\n")
    upper, lower = parsed(tmp_path / "upper.fa"), parsed(tmp_path / "lower.fa")
    np.testing.assert_array_equal(upper[0][1], lower[0][1])
    np.testing.assert_array_equal(upper[0][1], [0, 2, 3, 1, 4] * 2 + [4] * 4)


def test_n_iupac_and_gap_characters_are_code_4(tmp_path):
    odd = IUPAC + IUPAC.lower() + "UuXx-*."
    (tmp_path / "iupac.fa").write_text(f">iupac\n{odd}\n>acgt\nATCGatcg\n")
    (name, codes), (_, acgt) = parsed(tmp_path / "iupac.fa")
    assert name == "iupac" and codes.size == len(odd) and (codes == 4).all()
    np.testing.assert_array_equal(acgt, [0, 1, 2, 3] * 2)  # A=0 T=1 C=2 G=3 (DNABERT's ATCG order)


def test_empty_records_and_header_names(tmp_path):
    text = ">empty\n>chr1 Homo sapiens chromosome 1\nACGT\n>chr2\tdesc\n>chr3|x y\nGG\n>\nA\n>   \r\nC\n>last"
    (tmp_path / "h.fa").write_text(text)
    got = parsed(tmp_path / "h.fa", 5)
    assert [name for name, _ in got] == ["empty", "chr1", "chr2", "chr3|x", "", "", "last"]
    assert [codes.size for _, codes in got] == [0, 4, 0, 2, 1, 1, 0]


@pytest.mark.parametrize("chunk_size", [7, None])
def test_plain_gzip_and_bgzip_give_identical_records(tmp_path, chunk_size):
    rng = np.random.default_rng(2)
    text = fasta_text(random_records(rng, [3000, 10, 2500]), widths=[60, 50, 61]).encode()
    (tmp_path / "plain.fa").write_bytes(text)
    (tmp_path / "gzip.fa.gz").write_bytes(gzip.compress(text))
    (tmp_path / "bgzip.fa.gz").write_bytes(bgzip(text, [1, 1000, 1001, 3100, 4000]))  # members cut mid-line
    (tmp_path / "disguised.fa").write_bytes(gzip.compress(text))  # compression found by magic, not the name
    want = reference_parse(text)
    for name in ("plain.fa", "gzip.fa.gz", "bgzip.fa.gz", "disguised.fa"):
        assert_same(parsed(tmp_path / name, chunk_size), want)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=st.lists(
        st.tuples(st.text("abcXYZ_.|0123", min_size=1, max_size=6), st.text(LETTERS, max_size=200)),
        min_size=1,
        max_size=5,
    ),
    width=st.integers(1, 90),
    newline=st.sampled_from(["\n", "\r\n"]),
    chunk_size=st.integers(1, 100),
    compressed=st.booleans(),
)
def test_random_fasta_matches_reference_parser(tmp_path, records, width, newline, chunk_size, compressed):
    text = fasta_text(records, width, newline).encode()
    path = tmp_path / "h.fa"
    path.write_bytes(bgzip(text, [len(text) // 3]) if compressed else text)
    assert_same(parsed(path, chunk_size), reference_parse(text))


def test_shipped_bgzip_genome_matches_python_gzip():
    raw = SAMPLE.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[12:14] == b"BC"  # a real bgzip file (BGZF extra field)
    records = list(read_fasta(SAMPLE, progress=False))
    assert len(records) == 1
    record = records[0]
    assert record.name == "chr2" and record.codes.size == SAMPLE_LENGTH
    assert (record.codes[:10_000] == 4).all() and record.codes[10_000] != 4
    lines = gzip.decompress(raw).split(b"\n")
    assert lines[0].startswith(b">chr2")
    sequence = b"".join(line.strip() for line in lines[1:])
    reference = np.full(256, 4, np.uint8)
    for letter, code in CODE.items():
        reference[ord(letter)] = reference[ord(letter.lower())] = code
    want = reference[np.frombuffer(sequence, np.uint8)]
    np.testing.assert_array_equal(record.codes[:200_000], want[:200_000])
    np.testing.assert_array_equal(record.codes, want)
    # a small chunk size (lines straddle chunks, and bgzip blocks) gives the same codes
    small = next(read_fasta(SAMPLE, chunk_size=4099, progress=False))
    np.testing.assert_array_equal(small.codes, want)


# ------------------------------------------------------------------------------------------ errors
def read_error(path: Path, chunk_size: int | None = None) -> str:
    with pytest.raises(GMError) as info:
        parsed(path, chunk_size)
    message = str(info.value)
    assert str(path) in message, message
    return message


def test_missing_and_empty_files(tmp_path):
    assert "not found" in read_error(tmp_path / "nope.fa")
    (tmp_path / "empty.fa").write_bytes(b"")
    assert "empty" in read_error(tmp_path / "empty.fa")
    (tmp_path / "blank.fa").write_bytes(b"\n \n\r\n")
    assert "no FASTA record" in read_error(tmp_path / "blank.fa")
    (tmp_path / "empty.fa.gz").write_bytes(gzip.compress(b""))
    assert "no FASTA record" in read_error(tmp_path / "empty.fa.gz")
    (tmp_path / "adir").mkdir()
    read_error(tmp_path / "adir")


def test_binary_file(tmp_path):
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256))
    (tmp_path / "image.fa").write_bytes(png)
    assert "not a FASTA file" in read_error(tmp_path / "image.fa")
    (tmp_path / "bin.fa").write_bytes(b">x\n" + bytes(range(256)))  # a header, then binary junk
    assert "line 2" in read_error(tmp_path / "bin.fa")


@pytest.mark.parametrize("chunk_size", [7, None])
def test_text_that_is_not_fasta(tmp_path, chunk_size):
    (tmp_path / "notes.txt").write_text("hello, world\n>this is not\nACGT\n")
    message = read_error(tmp_path / "notes.txt", chunk_size)
    assert "not a FASTA file" in message and "line 1" in message
    (tmp_path / "table.csv").write_text("\n\nname,seq\nx,ACGT\n")
    assert "line 3" in read_error(tmp_path / "table.csv", chunk_size)


@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_sequence_before_first_header(tmp_path, chunk_size):
    (tmp_path / "a.fa").write_text("ACGT\n>chr1\nACGT\n")
    message = read_error(tmp_path / "a.fa", chunk_size)
    assert "before the first '>'" in message and "line 1:" in message
    (tmp_path / "b.fa").write_text("\n" * 10 + "acgt\n>chr1\nACGT\n")
    message = read_error(tmp_path / "b.fa", chunk_size)
    assert "before the first '>'" in message and "line 11:" in message


@pytest.mark.parametrize("chunk_size", [3, 7, 64, None])
def test_bad_character_names_its_line(tmp_path, chunk_size):
    lines = [">chr1 first"] + ["ACGTACGTAC"] * 20 + [">chr2"] + ["acgtn"] * 30
    lines[40] = "acg1n"  # line 41 (1-based)
    path = tmp_path / "bad.fa"
    path.write_text("\r\n".join(lines) + "\r\n")
    message = read_error(path, chunk_size)
    assert "line 41:" in message and "'1'" in message
    lines[40], lines[5] = "acgtn", "ACGT@CGTAC"  # now line 6
    path.write_text("\n".join(lines))
    assert "line 6:" in read_error(path, chunk_size)


def test_truncated_gzip(tmp_path):
    text = fasta_text(random_records(np.random.default_rng(3), [20_000])).encode()
    data = gzip.compress(text)
    (tmp_path / "cut.fa.gz").write_bytes(data[: len(data) // 2])
    assert "gzip" in read_error(tmp_path / "cut.fa.gz")
    (tmp_path / "cut_bgzip.fa.gz").write_bytes(bgzip(text, [5000, 10000])[:-40])
    read_error(tmp_path / "cut_bgzip.fa.gz")
    (tmp_path / "garbled.fa.gz").write_bytes(data[:10] + bytes(200) + data[210:])
    read_error(tmp_path / "garbled.fa.gz")


# ------------------------------------------------------------------------------------------ packing
@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=70))
def test_pack_unpack_round_trip(values):
    codes = np.asarray(values, dtype=np.uint8)
    packed = pack(codes)
    assert packed.dtype == np.uint8 and packed.size == -(-codes.size // 4)
    np.testing.assert_array_equal(unpack(packed, np.arange(codes.size)), codes)
    if codes.size:
        positions = np.random.default_rng(codes.size).integers(0, codes.size, 50)
        np.testing.assert_array_equal(unpack(packed, positions), codes[positions])


@given(st.lists(st.sampled_from([0, 1, 2, 3, 4]), max_size=200))
def test_acgt_runs_are_the_maximal_runs(codes):
    """Against the obvious loop: every maximal run of codes 0-3, half-open, in order."""
    from gm.data.fasta import acgt_runs

    want, start = [], None
    for i, code in enumerate(codes + [4]):
        if code != 4 and start is None:
            start = i
        elif code == 4 and start is not None:
            want.append((start, i))
            start = None
    starts, ends = acgt_runs(np.array(codes, dtype=np.uint8))
    assert list(zip(starts.tolist(), ends.tolist())) == want


def test_pack_layout_and_large_random_arrays():
    assert pack(np.array([0, 1, 2, 3], np.uint8)).tolist() == [0b11100100]  # lowest bits first
    assert pack(np.array([3, 3, 3, 3, 1], np.uint8)).tolist() == [255, 1]  # padded with A (0)
    rng = np.random.default_rng(4)
    for n in (1, 2, 3, 5, 1001, 99_999):
        codes = rng.integers(0, 4, n).astype(np.uint8)
        np.testing.assert_array_equal(unpack(pack(codes), np.arange(n)), codes)


# ------------------------------------------------------------------------------------------ cache
def reference_segments(records: list[tuple[str, str]], min_segment: int) -> list[tuple[int, int, int]]:
    out = []
    for index, (_, seq) in enumerate(records):
        start = None
        for i, c in enumerate(seq + "N"):
            if c.upper() in CODE:
                start = i if start is None else start
            elif start is not None:
                if i - start >= min_segment:
                    out.append((index, start, i - start))
                start = None
    return out


def cache_rows(cache: GenomeCache) -> list[tuple[int, int, int]]:
    return list(zip(cache.seg_record.tolist(), cache.seg_start.tolist(), cache.seg_length.tolist()))


def assert_cache_matches(cache: GenomeCache, records: list[tuple[str, str]], min_segment: int) -> None:
    assert cache_rows(cache) == reference_segments(records, min_segment)
    assert cache.record_names == [header.split()[0] for header, _ in records]
    assert cache.meta["record_lengths"] == [len(seq) for _, seq in records]
    assert (cache.seg_offset % 4 == 0).all()
    packed = cache.packed()
    for record, start, length, offset in zip(cache.seg_record, cache.seg_start, cache.seg_length, cache.seg_offset):
        seq = records[record][1][start : start + length]
        np.testing.assert_array_equal(unpack(packed, offset + np.arange(length)), expected_codes(seq))
    assert cache.total_bases == sum(length for *_, length in reference_segments(records, min_segment))


def gapped_records(seed: int = 5) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    acgt = lambda n: "".join(rng.choice(list("ACGTacgt"), n))  # noqa: E731
    return [
        ("chrA first", acgt(37) + "NNNN" + acgt(12) + "R" + acgt(3) + "n" + acgt(100) + "NNNNNNNN"),
        ("chrB", "ACGT" + acgt(11)),  # ends and the next starts with ACGT: records must not merge
        ("chrC", "ACGT" + acgt(40) + "Y" + acgt(9) + "y" + acgt(10)),
        ("chrEmpty", ""),
        ("chrN", "N" * 50),
        ("chrD", "k" + acgt(64)),
    ]


@pytest.mark.parametrize("min_segment", [1, 10])
def test_cache_segments_are_maximal_acgt_runs(tmp_path, min_segment):
    records = gapped_records()
    path = tmp_path / "gapped.fa.gz"
    path.write_bytes(bgzip(fasta_text(records, 13).encode(), [100]))
    cache = build_or_load_cache(path, tmp_path / "cache", min_segment)
    assert_cache_matches(cache, records, min_segment)
    assert cache.meta["min_segment"] == min_segment
    # records never merge: chrB's last run and chrC's first are separate segments
    assert 1 in cache.seg_record.tolist() and 2 in cache.seg_record.tolist()
    assert cache_entries(tmp_path / "cache") == [cache.directory.name]  # no .tmp-* left over
    assert cache.directory == cache_dir_for(path, tmp_path / "cache", min_segment)
    loaded = GenomeCache.load(cache.directory)
    assert cache_rows(loaded) == cache_rows(cache)


def test_cache_is_built_once(tmp_path, monkeypatch):
    records = gapped_records()
    path = tmp_path / "g.fa"
    path.write_text(fasta_text(records))
    first = build_or_load_cache(path, tmp_path / "cache", 8)
    meta = first.directory / "meta.json"
    stamp = meta.stat().st_mtime_ns

    def no_reading(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(fasta_mod, "read_fasta", no_reading)
    second = build_or_load_cache(path, tmp_path / "cache", 8)
    assert meta.stat().st_mtime_ns == stamp
    assert cache_rows(second) == cache_rows(first) and second.meta == first.meta
    # another min_segment is another cache
    monkeypatch.undo()
    other = build_or_load_cache(path, tmp_path / "cache", 30)
    assert other.directory != first.directory
    assert cache_rows(other) == reference_segments(records, 30)


def test_cache_is_rebuilt_when_the_source_changes(tmp_path):
    path = tmp_path / "g.fa"
    records = gapped_records(6)
    path.write_text(fasta_text(records))
    old = build_or_load_cache(path, tmp_path / "cache", 5)
    assert_cache_matches(old, records, 5)
    # same size and the very same mtime, different bases: the content hash catches it
    stat = path.stat()
    swapped = [(h, s.translate(str.maketrans("ACGTacgt", "TGCAtgca"))) for h, s in records]
    path.write_text(fasta_text(swapped))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    new = build_or_load_cache(path, tmp_path / "cache", 5)
    assert new.directory == old.directory
    assert_cache_matches(new, swapped, 5)
    # different records altogether
    other = [("x", "ACGTN" * 30), ("y", "GATTACA" * 9)]
    path.write_text(fasta_text(other))
    assert_cache_matches(build_or_load_cache(path, tmp_path / "cache", 5), other, 5)
    assert cache_entries(tmp_path / "cache") == [old.directory.name]


@pytest.mark.parametrize("size", [1_500_000, 3_000_000])
def test_cache_notices_a_changed_tail_of_a_mid_sized_file(tmp_path, size):
    """Same size, same mtime, different last bases: files up to 2 MiB are hashed whole, larger
    ones at both ends."""
    rng = np.random.default_rng(9)
    records = [("big", "".join(rng.choice(list("ACGT"), size)))]
    path = tmp_path / "big.fa"
    path.write_text(fasta_text(records, 100))
    old = build_or_load_cache(path, tmp_path / "cache", 5)
    stat = path.stat()
    changed = [("big", records[0][1][:-1000] + "N" * 1000)]
    path.write_text(fasta_text(changed, 100))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    new = build_or_load_cache(path, tmp_path / "cache", 5)
    assert old.total_bases == size and new.total_bases == size - 1000


def test_unreadable_or_old_cache_is_rebuilt(tmp_path):
    records = gapped_records(7)
    path = tmp_path / "g.fa"
    path.write_text(fasta_text(records))
    cache = build_or_load_cache(path, tmp_path / "cache", 4)
    meta_path = cache.directory / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, version=-1)))
    assert build_or_load_cache(path, tmp_path / "cache", 4).meta == meta
    meta_path.write_text("{ not json")
    assert_cache_matches(build_or_load_cache(path, tmp_path / "cache", 4), records, 4)


@pytest.mark.parametrize("whole_hash_limit", [None, 1 << 20])
def test_cache_notices_a_same_size_same_mtime_edit_in_the_middle(tmp_path, monkeypatch, caplog, whole_hash_limit):
    """The old fingerprint hashed only the first and last MiB: a middle edit of a 3 MB file that
    kept its size and mtime kept the old cache. Now files up to 32 MiB are hashed whole and larger
    ones (here: a limit of 1 MiB) sampled in 65 blocks, the middle one among them."""
    if whole_hash_limit is not None:
        monkeypatch.setattr(fasta_mod, "_WHOLE_HASH_LIMIT", whole_hash_limit)
    rng = np.random.default_rng(11)
    seq = "".join(rng.choice(list("ACGT"), 3_000_000))
    path = tmp_path / "big.fa"
    path.write_text(fasta_text([("big", seq)], 100))
    old = build_or_load_cache(path, tmp_path / "cache", 5)
    stat = path.stat()
    middle = len(seq) // 2
    changed = seq[:middle] + "N" * 500 + seq[middle + 500 :]
    path.write_text(fasta_text([("big", changed)], 100))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    with caplog.at_level("WARNING", logger="gm.data.fasta"):
        new = build_or_load_cache(path, tmp_path / "cache", 5)
    assert "the source file changed since it was built (hash differ); rebuilding it" in caplog.text
    assert old.total_bases == len(seq) and new.total_bases == len(seq) - 500
    assert cache_rows(new) == [(0, 0, middle), (0, middle + 500, len(seq) - middle - 500)]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "name, damage, why",
    [
        ("bases.2bit", _truncate, "bases.2bit is [0-9]+ bytes, not the [0-9]+ it was built with \\(damaged\\)"),
        ("bases.2bit", lambda p: p.write_bytes(b""), "bases.2bit is 0 bytes, not the [0-9]+ it was built with"),
        ("bases.2bit", _flip_bytes, "bases.2bit does not match its checksum \\(damaged\\)"),
        ("bases.2bit", Path.unlink, "a data file is missing or unreadable \\(No such file or directory: .*bases.2bit\\)"),
        ("segments.npy", _flip_bytes, "segments.npy does not match its checksum"),
        ("segments.npy", _truncate, "segments.npy is [0-9]+ bytes, not the [0-9]+ it was built with"),
    ],
)
def test_damaged_cache_is_rebuilt_not_trusted(tmp_path, caplog, name, damage, why):
    """A truncated bases.2bit used to be trusted: every later run crashed with an IndexError."""
    import re

    records = gapped_records(12)
    path = tmp_path / "g.fa"
    path.write_text(fasta_text(records))
    cache = build_or_load_cache(path, tmp_path / "cache", 4)
    damage(cache.directory / name)
    with caplog.at_level("WARNING", logger="gm.data.fasta"):
        again = build_or_load_cache(path, tmp_path / "cache", 4)
    assert re.search(f"genome cache {re.escape(str(cache.directory))}: {why}[^;]*; rebuilding it", caplog.text), caplog.text
    assert_cache_matches(again, records, 4)  # reads every base back: no IndexError, the right bases
    caplog.clear()
    with caplog.at_level("WARNING", logger="gm.data.fasta"):
        build_or_load_cache(path, tmp_path / "cache", 4)  # sound again: reused without a word
    assert caplog.text == ""


def _read_only(monkeypatch, root: Path) -> None:
    """Make ``root`` behave as a read-only file system: creating anything under it fails with
    EROFS. (Tests run as root, which chmod cannot stop, and a read-only mount needs privileges.)"""
    import builtins
    import errno

    def refuse(path) -> None:
        if str(os.path.abspath(path)).startswith(str(root)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    real_mkdir, real_os_open, real_open = os.mkdir, os.open, builtins.open

    def mkdir(path, *args, **kwargs):
        if os.path.isdir(path):
            raise FileExistsError(errno.EEXIST, "File exists", str(path))
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)


def test_read_only_cache_folder_is_one_clear_line(tmp_path, monkeypatch):
    path = tmp_path / "g.fa"
    path.write_text(fasta_text(gapped_records(13)))
    root = tmp_path / "cache"
    built = build_or_load_cache(path, root, 4)  # a sound cache is only read: a read-only folder is fine
    _read_only(monkeypatch, root)
    assert cache_rows(build_or_load_cache(path, root, 4)) == cache_rows(built)
    with pytest.raises(GMError) as info:  # a cache still to build cannot be
        build_or_load_cache(path, root, 9)
    directory = cache_dir_for(path, root, 9)
    message = str(info.value)
    assert message.startswith(f"cannot write the genome cache {directory}: read-only file system (")
    assert message.endswith("; set GM_CACHE_DIR (paths.cache_dir) to a folder you can write")
    assert "\n" not in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 555")
def test_unwritable_cache_folder_for_real(tmp_path):
    path = tmp_path / "g.fa"
    path.write_text(fasta_text(gapped_records(13)))
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(GMError, match="permission denied.*set GM_CACHE_DIR"):
            build_or_load_cache(path, root, 4)
    finally:
        root.chmod(0o755)


def test_full_disk_names_the_cache_being_written(tmp_path, monkeypatch):
    """errno 28 names no file: the line names the cache, and the half-built cache is removed."""
    import builtins

    from conftest import FullDiskFile

    path = tmp_path / "g.fa"
    path.write_text(fasta_text(random_records(np.random.default_rng(3), [50_000], "ACGT")))
    real_open = builtins.open

    def open_(file, mode="r", *args, **kwargs):  # the 2-bit bases are written through open(.., "wb")
        handle = real_open(file, mode, *args, **kwargs)
        return FullDiskFile(handle) if str(file).endswith("bases.2bit") else handle

    monkeypatch.setattr(fasta_mod, "open", open_, raising=False)
    root = tmp_path / "cache"
    with pytest.raises(GMError) as info:
        build_or_load_cache(path, root, 4)
    assert str(info.value) == (
        f"cannot write the genome cache {cache_dir_for(path, root, 4)}: no space left on device; "
        "free some space, or set GM_CACHE_DIR (paths.cache_dir) to a folder on another disk"
    )
    assert cache_entries(root) == []


@pytest.mark.parametrize(
    "content",
    [
        ">a\nNNNNNNNNNN\n>b\nnnnnRYK\n",  # all N / IUPAC
        ">a\nACGTNACGTNNACGTAnACG\n>b\nACGTAC\n",  # only runs shorter than min_segment (7)
        ">a\n>b\n",  # records without sequence
    ],
)
def test_no_usable_sequence(tmp_path, content):
    path = tmp_path / "useless.fa"
    path.write_text(content)
    with pytest.raises(GMError, match="no usable sequence") as info:
        build_or_load_cache(path, tmp_path / "cache", 7)
    assert str(path) in str(info.value)
    assert cache_entries(tmp_path / "cache") == []  # neither the cache nor a .tmp-* directory


def test_failed_builds_leave_nothing_behind(tmp_path):
    text = fasta_text(random_records(np.random.default_rng(8), [20_000], "ACGT")).encode()
    data = gzip.compress(text)
    cut = tmp_path / "cut.fa.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(GMError, match="gzip"):
        build_or_load_cache(cut, tmp_path / "cache", 5)
    bad = tmp_path / "bad.fa"
    bad.write_bytes(text[:5000] + b"#" + text[5000:])
    with pytest.raises(GMError, match="line"):
        build_or_load_cache(bad, tmp_path / "cache", 5)
    with pytest.raises(GMError, match="not found"):
        build_or_load_cache(tmp_path / "missing.fa", tmp_path / "cache", 5)
    assert cache_entries(tmp_path / "cache") == []


# ------------------------------------------------------------------------------------------ fetch
def test_fetch_file_url_once_atomically(tmp_path, monkeypatch):
    source = tmp_path / "src" / "genome.fa.gz"
    source.parent.mkdir()
    source.write_bytes(gzip.compress(fasta_text(gapped_records()).encode()))
    downloads = tmp_path / "downloads"
    got = fetch(source.as_uri(), downloads)
    assert got == downloads / "genome.fa.gz" and got.read_bytes() == source.read_bytes()
    assert cache_entries(downloads) == ["genome.fa.gz"]  # no .part left over
    stamp = got.stat().st_mtime_ns

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded twice")

    monkeypatch.setattr(urllib.request, "urlopen", no_download)
    assert fetch(source.as_uri(), downloads) == got and got.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    # the downloaded file reads like the source
    assert_same(parsed(got), parsed(source))
    # the name comes from the URL's path, without query or fragment
    assert fetch(source.as_uri() + "#part", tmp_path / "d2") == tmp_path / "d2" / "genome.fa.gz"


def test_fetch_missing_url(tmp_path):
    url = (tmp_path / "absent.fa").as_uri()
    with pytest.raises(GMError) as info:
        fetch(url, tmp_path / "downloads")
    assert url in str(info.value) and "download failed" in str(info.value)
    assert cache_entries(tmp_path / "downloads") == []  # neither the target nor a .part file


class FakeResponse:
    """A download that delivers ``blocks`` and then does ``then`` (raise, or end early)."""

    def __init__(self, blocks: list[bytes], length: int, then: BaseException | None = None) -> None:
        self.blocks, self.then = list(blocks), then
        self.headers = {"Content-Length": str(length)}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, size: int = -1) -> bytes:
        if self.blocks:
            return self.blocks.pop(0)
        if self.then is not None:
            raise self.then
        return b""


@pytest.mark.parametrize(
    "then, error",
    [
        (http.client.IncompleteRead(b"x" * 10, 80), GMError),  # connection cut mid-body
        (ConnectionResetError("reset by peer"), GMError),
        (None, GMError),  # fewer bytes than Content-Length, without an error
        (KeyboardInterrupt(), KeyboardInterrupt),
    ],
)
def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch, then, error):
    url = "https://example.org/genomes/hg.fa.gz?token=1"
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: FakeResponse([b"x" * 10, b"y" * 10], 100, then))
    with pytest.raises(error) as info:
        fetch(url, tmp_path / "downloads")
    if error is GMError:
        assert url in str(info.value)
    assert cache_entries(tmp_path / "downloads") == []
    # a complete download lands under the URL path's name
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: FakeResponse([b"x" * 60, b"y" * 40], 100))
    assert fetch(url, tmp_path / "downloads").read_bytes() == b"x" * 60 + b"y" * 40
    assert cache_entries(tmp_path / "downloads") == ["hg.fa.gz"]


def _build_in_child(args: tuple[str, str]) -> tuple[str, int]:
    fasta, root = args
    cache = build_or_load_cache(fasta, root, 8)
    return str(cache.directory), int(cache.seg_length.sum())


def test_concurrent_builders_share_one_cache(tmp_path):
    """Ranks or nodes that build the same cache at once all get the same, complete cache."""
    import multiprocessing

    rng = np.random.default_rng(3)
    path = tmp_path / "big.fa"
    path.write_text(">a\n" + "".join(rng.choice(list("ACGTN"), 400_000, p=[0.24, 0.24, 0.24, 0.24, 0.04])) + "\n")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_build_in_child, [(str(path), str(tmp_path / "cache"))] * 4)
    assert len(set(results)) == 1
    assert cache_entries(tmp_path / "cache") == [Path(results[0][0]).name]


def test_fetch_into_a_read_only_folder_is_one_clear_line(tmp_path, monkeypatch):
    source = tmp_path / "src" / "genome.fa.gz"
    source.parent.mkdir()
    source.write_bytes(gzip.compress(fasta_text(gapped_records()).encode()))
    downloads = tmp_path / "downloads"
    _read_only(monkeypatch, downloads)
    with pytest.raises(GMError) as info:
        fetch(source.as_uri(), downloads)
    assert str(info.value).startswith(f"cannot write {downloads / 'genome.fa.gz'}: read-only file system (")
    assert str(info.value).endswith("; set GM_CACHE_DIR (paths.cache_dir) or data.download_dir to another folder")
