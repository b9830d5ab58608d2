"""`python analyze.py efficiency`: steps to reach a share of the reference strategy's final probe MCC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gm.analysis.cli import main as analyze
from gm.analysis.efficiency import steps_to_threshold, to_markdown
from gm.utils import GMError

TARGETS = {"kmer_span": "gm.masking.strategies.KmerSpanMasking", "genemask": "gm.masking.strategies.GeneMaskMasking",
           "cm_gems": "gm.masking.schedules.PlateauSwitch"}


def write_run(folder: Path, masking: str, curve: dict[int, float], task: str = "prom_core") -> Path:
    """A pretraining run folder as train.py leaves it: its config and a CSV with probe rows among other rows."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"masking": {"_target_": TARGETS[masking]}, "task_name": "pretrain"}))
    (folder / "csv").mkdir()
    lines = ["step,train/loss,probe/%s/mcc,probe/%s/accuracy" % (task, task)]
    for step in range(0, max(curve) + 1, 50):
        lines.append(f"{step},{8 - step / 1000},,")  # training rows: no probe value
        if step in curve:
            lines.append(f"{step},,{curve[step]},{0.5 + curve[step] / 2}")
    (folder / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    """kmer_span ends at 0.40 and 0.50 (threshold 0.9 x 0.45 = 0.405); genemask reaches it at 200 and 300;
    cm_gems has one seed that never does."""
    return [
        write_run(tmp_path / "k0", "kmer_span", {0: 0.0, 100: 0.2, 200: 0.3, 300: 0.38, 400: 0.40}),
        write_run(tmp_path / "k1", "kmer_span", {0: 0.0, 100: 0.1, 200: 0.3, 300: 0.41, 400: 0.50}),
        write_run(tmp_path / "g0", "genemask", {0: 0.0, 100: 0.3, 200: 0.41, 300: 0.45, 400: 0.46}),
        write_run(tmp_path / "g1", "genemask", {0: 0.0, 100: 0.3, 200: 0.40, 300: 0.44, 400: 0.45}),
        write_run(tmp_path / "c0", "cm_gems", {0: 0.0, 100: 0.45, 200: 0.5, 300: 0.5, 400: 0.5}),
        write_run(tmp_path / "c1", "cm_gems", {0: 0.0, 100: 0.1, 200: 0.2, 300: 0.3, 400: 0.35}),
    ]


def test_steps_to_threshold_per_strategy_with_seeds_and_censoring(runs):
    rows = {r.strategy: r for r in steps_to_threshold(runs)}
    assert rows["kmer_span"].threshold == pytest.approx(0.405)
    assert rows["kmer_span"].steps == [None, 300]  # seed 0 ends at 0.40 < 0.405: censored
    assert rows["genemask"].steps == [200, 300]
    summary = rows["genemask"].summary()
    assert summary["mean"] == 250 and (summary["min"], summary["max"]) == (200, 300)
    lo, hi = summary["ci95"]
    assert lo < 250 < hi and hi - 250 == pytest.approx(12.706 * 50, rel=1e-3)  # t(0.975, 1) * sd / sqrt(2), sd = 50 sqrt(2)
    assert rows["cm_gems"].summary()["mean"] is None  # a censored seed: no mean, not a made-up number
    table = to_markdown(list(rows.values()), "kmer_span", 0.9)
    assert "| prom_core | 0.405 | cm_gems | 1/2 | 100, >400 |" in table
    assert "| prom_core | 0.405 | genemask | 2/2 | 250 [" in table


def test_cli_writes_the_table_and_json(runs, tmp_path, capsys):
    assert analyze(["efficiency", *map(str, runs), "--out", str(tmp_path / "analysis")]) == 0
    assert "genemask" in capsys.readouterr().out
    data = json.loads((tmp_path / "analysis" / "efficiency.json").read_text())
    assert {d["strategy"] for d in data} == {"kmer_span", "genemask", "cm_gems"}


def test_no_probe_or_no_reference_is_one_line(runs, tmp_path, capsys):
    with pytest.raises(GMError, match="--reference bert: no such strategy"):
        steps_to_threshold(runs, reference="bert")
    flat = write_run(tmp_path / "flat", "kmer_span", {0: 0.0, 100: -0.1})
    (row,) = steps_to_threshold([flat])  # the reference at chance sets no bar: said, not a made-up number
    assert row.threshold is None and row.steps == [None] and row.summary()["mean"] is None
    assert "no threshold: `kmer_span` ends at chance" in to_markdown([row], "kmer_span", 0.9)
    assert analyze(["efficiency", str(runs[0]), "--fraction", "1.5"]) == 2
    assert capsys.readouterr().err.strip() == "error: --fraction must be in (0, 1], got 1.5"
