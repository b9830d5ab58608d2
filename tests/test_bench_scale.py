"""The ``scale`` benchmark part: its synthetic genomes have hg38's structure, and it measures every stage."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from gm.bench import cli, scale, synthetic
from gm.data.fasta import read_fasta

CODE_N = 4


def records_of(path: Path) -> list[tuple[str, np.ndarray]]:
    return [(r.name, r.codes) for r in read_fasta(path, progress=False)]


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> dict[str, Path]:
    return synthetic.write_genome(tmp_path_factory.mktemp("synthetic"), 3_000_000, seed=4)


def test_synthetic_genome_has_hg38s_structure(genome: dict[str, Path]) -> None:
    records = records_of(genome["plain"])
    layout = synthetic.layout(3_000_000, seed=4)
    assert [name for name, _ in records] == [name for name, _ in synthetic.HG38_CHROMOSOMES]  # 24 records
    assert [codes.size for _, codes in records] == [r.length for r in layout]
    assert sum(codes.size for _, codes in records) == pytest.approx(3_000_000, rel=1e-4)
    by_name = dict(records)
    for name, codes in records:  # telomere-like N at both ends of every record
        assert (codes[:10] == CODE_N).all() and (codes[-10:] == CODE_N).all(), name
    assert (by_name["chrY"] == CODE_N).mean() > 0.6  # one record mostly N
    for name in synthetic.ACROCENTRIC:  # the short arm: one long run of N
        assert (by_name[name][: int(0.14 * by_name[name].size)] == CODE_N).all(), name
    everything = np.concatenate([codes for _, codes in records])
    acgt = np.bincount(everything, minlength=5)[:4] / np.count_nonzero(everything != CODE_N)
    np.testing.assert_allclose(acgt, [0.295, 0.295, 0.205, 0.205], atol=0.003)  # A T C G: human composition
    assert np.count_nonzero(everything == CODE_N) == pytest.approx(synthetic.unknown_bases(layout), rel=0.01)
    text = genome["plain"].read_bytes()
    letters = np.frombuffer(text, dtype=np.uint8)
    lines = text.split(b"\n")
    assert {len(line) for line in lines if not line.startswith(b">")} - {0} <= set(range(1, synthetic.LINE + 1))
    sequence = letters[np.isin(letters, np.frombuffer(b"ACGTacgt", dtype=np.uint8))]
    assert 0.4 < np.mean(sequence >= ord("a")) < 0.6  # about half soft-masked
    runs = np.flatnonzero(np.diff((sequence >= ord("a")).astype(np.int8))).size
    assert sequence.size / runs == pytest.approx(synthetic._SOFT_MASK_RUN, rel=0.2)  # in runs of a few hundred bases
    assert set(np.unique(letters).tobytes()) & set(b"RYKMSW")  # scattered IUPAC codes


def test_the_three_formats_hold_the_same_genome_and_bgzip_is_bgzf(genome: dict[str, Path]) -> None:
    plain = genome["plain"].read_bytes()
    assert gzip.decompress(genome["gzip"].read_bytes()) == plain
    raw = genome["bgzip"].read_bytes()
    assert gzip.decompress(raw) == plain
    assert raw.endswith(synthetic._BGZF_EOF)
    offset = blocks = 0
    while offset < len(raw):  # BGZF blocks: the 'BC' extra field, whose BSIZE leads to the next block
        assert raw[offset : offset + 4] == b"\x1f\x8b\x08\x04" and raw[offset + 12 : offset + 14] == b"BC", offset
        offset += int.from_bytes(raw[offset + 16 : offset + 18], "little") + 1
        blocks += 1
    assert offset == len(raw) and blocks == -(-len(plain) // synthetic._BGZF_BLOCK) + 1  # + the end-of-file block
    reference = records_of(genome["plain"])
    for fmt in ("gzip", "bgzip"):
        got = records_of(genome[fmt])
        assert [n for n, _ in got] == [n for n, _ in reference]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, reference))


def test_same_seed_same_genome_other_seed_another(tmp_path: Path, genome: dict[str, Path]) -> None:
    again = synthetic.write_genome(tmp_path / "a", 3_000_000, seed=4, formats=("plain",))
    other = synthetic.write_genome(tmp_path / "b", 3_000_000, seed=5, formats=("plain",))
    assert again["plain"].read_bytes() == genome["plain"].read_bytes()
    assert other["plain"].read_bytes() != genome["plain"].read_bytes()
    with pytest.raises(ValueError, match="unknown formats"):
        synthetic.write_genome(tmp_path / "c", 10_000, formats=("zip",))


def test_scale_part_measures_every_stage_in_its_own_process(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    assert cli.main(["--parts", "scale", "--scale-sizes", "0.003", "--scale-batches", "5", "--scale-formats", "plain",
                     "bgzip", "--scale-dir", str(tmp_path), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    stages = [r["stage"] for r in rows]
    assert stages == ["cache", "cache", "first batch", "loader", "plan 1", "plan 8", "npmi"]
    assert [r["format"] for r in rows if r["stage"] == "cache"] == ["plain", "bgzip"]
    for r in rows:
        assert r["size_gb"] == 0.003 and r["records"] == 24
        assert math.isfinite(r["ours"]) and r["ours"] > 0, r
        assert 0 < r["ours_peak_mib"] < scale.TARGET_PEAK_MIB, r  # each stage's own peak RSS
    cache_rows = [r for r in rows if r["stage"] == "cache"]
    assert len({r["cache_bases"] for r in cache_rows}) == 1  # every format gives the same cache
    assert all(r["cache_bases"] < r["bases"] - r["unknown_bases"] + 100 for r in cache_rows)
    plans = {r["world_size"]: r for r in rows if r["stage"].startswith("plan")}
    assert plans[8]["plan_windows"] == pytest.approx(plans[1]["plan_windows"] / 8, abs=10)  # rank 0 keeps an eighth
    assert plans[8]["plan_kept_mib"] < plans[1]["plan_kept_mib"]
    (npmi,) = [r for r in rows if r["stage"] == "npmi"]
    assert npmi["format"] == "plain" and npmi["time_met_if_linear"] in (True, False)  # gzip when there is one
    assert list(tmp_path.iterdir()) == [out]  # the genomes and caches are gone


def test_growth_rows_compare_time_ratio_with_size_ratio() -> None:
    timings = {("cache plain", 1.0): 10.0, ("cache plain", 3.1): 31.0, ("npmi", 1.0): 5.0, ("npmi", 3.1): 20.0,
               ("npmi", 0.1): 0.4}
    rows = {r["stage"]: r for r in scale._growth_rows(timings, [0.1, 1.0, 3.1])}
    assert rows["cache plain"]["ours"] == pytest.approx(3.1) and rows["cache plain"]["ratio"] == pytest.approx(1.0)
    assert rows["npmi"]["ratio"] == pytest.approx(4.0 / 3.1)  # faster than linear growth
    assert scale._growth_rows(timings, [3.1]) == []


def test_targets_are_judged_at_3_1_gb_and_extrapolated_below() -> None:
    assert scale._met(3.1, 599.0, 600.0, 4000.0) == {
        "peak_target_mib": 4096.0, "peak_met": True, "seconds_per_gb": pytest.approx(599.0 / 3.1),
        "target_seconds_at_3.1Gb": 600.0, "time_met": True}
    assert scale._met(1.0, 200.0, 600.0, 5000.0)["time_met_if_linear"] is False  # 620 s at 3.1 Gb
    assert scale._met(1.0, 200.0, 600.0, 5000.0)["peak_met"] is False


@pytest.mark.parametrize("argv, message", [
    (["--scale-sizes", "0"], "--scale-sizes must be in"),
    (["--scale-batches", "0"], "--scale-batches must be at least 1"),
    (["--scale-dir", "/nonexistent/folder"], "not a folder"),
    (["--scale-cpu", "4096"], "not one of this process's CPUs"),
])
def test_bad_scale_options_are_one_line(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--parts", "scale", *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_scale_is_not_in_the_default_parts(monkeypatch) -> None:
    ran = []
    monkeypatch.setattr(cli, "PARTS", {name: (lambda args, name=name: ran.append(name) or []) for name in cli.PARTS})
    assert cli.main([]) == 0
    assert "scale" not in ran and "tokenizer" in ran


def test_too_little_disk_for_the_largest_genome_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 5_000_000_000})())
    with pytest.raises(SystemExit) as info:
        cli.main(["--parts", "scale", "--scale-dir", str(tmp_path)])  # 3.1 Gb needs ~7.4 GB
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2 and f"{tmp_path}: 5.0 GB free, but the 3.1 Gb genome" in err and "7.4 GB" in err
    assert list(tmp_path.iterdir()) == []  # refused before writing anything
