"""`python analyze.py results`: collect fine-tuning results.json files, aggregate over seeds, report."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gm.analysis.cli import main
from gm.analysis.results import aggregate, collect, format_cell, model_label, to_markdown, write_csv, write_figures
from gm.utils import GMError

MODELS = {"genemask-10k": "/runs/pretrain/2024-05-01_12-00-00/hf", None: None}  # name -> pretrained
TASKS = {"prom_core": "shipped", "prom_300": "carved"}
SHOTS = (10, 100)
SEEDS = (0, 1, 2)
METRICS = ("accuracy", "f1_macro", "mcc", "auroc")


def metric_values(task: str, shots: int, model: str | None, seed: int) -> dict:
    """Deterministic, distinct values per run."""
    rng = np.random.default_rng([len(task), shots, 0 if model is None else 1, seed])
    return {m: float(v) for m, v in zip(METRICS, rng.uniform(0.4, 0.95, size=4))}


def write_result(folder: Path, task: str, shots: int, seed: int, name: str | None, pretrained: str | None,
                 test_source: str, metrics: dict | None = None, finished_at: str = "2024-06-01T12:00:00+00:00",
                 **extra) -> Path:
    record = {
        "task": task, "shots": shots, "seed": seed, "pretrained": pretrained,
        "masking": "genemask" if pretrained else None, "pretrain_steps": 10000 if pretrained else None,
        "test_source": test_source, "train_source": "shipped",
        "metrics": metrics or metric_values(task, shots, name, seed),
        "n_train": 2 * shots, "n_test": 200, "runtime_seconds": 1.5, "model": "tiny", "k": 6,
        "finished_at": finished_at, **extra,
    }
    if name is not None:  # random init comes without pretrained_name: the label is derived
        record["pretrained_name"] = name
    path = folder / f"{name or 'random'}_{task}_{shots}_s{seed}" / "run" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    return path


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 models x 2 tasks x 2 shot counts x 3 seeds; seed 2 ran on another day (a second folder)."""
    root = tmp_path / "sweeps"
    for name, pretrained in MODELS.items():
        for task, source in TASKS.items():
            for shots in SHOTS:
                for seed in SEEDS:
                    write_result(root / ("day2" if seed == 2 else "day1"), task, shots, seed, name, pretrained, source)
    return root


def expected(task: str, shots: int, name: str | None, metric: str) -> tuple[float, float]:
    values = [metric_values(task, shots, name, seed)[metric] for seed in SEEDS]
    return float(np.mean(values)), float(np.std(values, ddof=1))


def test_collect_and_aggregate_match_numpy(sweep):
    records = collect([sweep / "day1", sweep / "day2"])
    assert len(records) == 24
    assert collect([sweep]) and len(collect([sweep, sweep / "day1"])) == 24  # overlapping folders count once
    rows = aggregate(records)
    assert len(rows) == 8
    assert [(r.task, r.shots, r.model) for r in rows][:4] == [
        ("prom_core", 10, "random init"), ("prom_core", 10, "genemask-10k"),
        ("prom_core", 100, "random init"), ("prom_core", 100, "genemask-10k")]
    for row in rows:
        name = None if row.model == "random init" else row.model
        assert row.seeds == [0, 1, 2] and row.n_seeds == 3
        assert row.test_source == TASKS[row.task]
        for metric in METRICS:
            mean, std = expected(row.task, row.shots, name, metric)
            assert row.mean[metric] == pytest.approx(mean, abs=1e-12)
            assert row.std[metric] == pytest.approx(std, abs=1e-12)


def test_markdown_cells_and_carved_footnote(sweep):
    text = to_markdown(aggregate(collect([sweep])))
    lines = text.splitlines()
    assert lines[0] == "| task | shots | model | seeds | accuracy | f1_macro | mcc | auroc |"
    mean, std = expected("prom_300", 100, "genemask-10k", "mcc")
    row = next(line for line in lines if line.startswith("| prom_300 † | 100 | genemask-10k |"))
    assert f"{mean:.3f} ± {std:.3f}" in row
    mean, std = expected("prom_core", 10, None, "accuracy")
    assert f"| prom_core | 10 | random init | 3 | {mean:.3f} ± {std:.3f} |" in text
    assert not any(line.startswith("| prom_core †") for line in lines)
    footnote = next(line for line in lines if line.startswith("† "))
    assert "carved" in footnote.lower() and "prom_300" in footnote and "prom_core" not in footnote


def test_csv_parses_into_the_right_numbers(sweep, tmp_path):
    path = write_csv(aggregate(collect([sweep])), tmp_path / "out" / "results.csv")
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert len(rows) == 8
    assert list(rows[0]) == ["task", "shots", "model", "n_seeds", "seeds", "test_source",
                             *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")]]
    for row in rows:
        name = None if row["model"] == "random init" else row["model"]
        assert int(row["n_seeds"]) == 3 and row["seeds"] == "0;1;2"
        assert row["test_source"] == TASKS[row["task"]]
        for metric in METRICS:
            mean, std = expected(row["task"], int(row["shots"]), name, metric)
            assert float(row[f"{metric}_mean"]) == pytest.approx(mean, abs=1e-12)
            assert float(row[f"{metric}_std"]) == pytest.approx(std, abs=1e-12)


def test_single_seed_and_three_class_task(tmp_path):
    metrics = {"accuracy": 0.61, "f1_macro": 0.55, "mcc": 0.4, "auroc": None}
    write_result(tmp_path, "splice_40", 10, 0, "genemask-10k", "/x/hf", "shipped", metrics=metrics)
    rows = aggregate(collect([tmp_path]))
    assert len(rows) == 1 and math.isnan(rows[0].std["accuracy"]) and math.isnan(rows[0].mean["auroc"])
    assert "| splice_40 | 10 | genemask-10k | 1 | 0.610 ± - | 0.550 ± - | 0.400 ± - | n/a |" in to_markdown(rows)
    assert format_cell(0.5, float("nan")) == "0.500 ± -"
    row = next(csv.DictReader(write_csv(rows, tmp_path / "r.csv").read_text().splitlines()))
    assert row["accuracy_mean"] == "0.61" and row["accuracy_std"] == "" and row["auroc_mean"] == ""
    assert write_figures(rows, tmp_path, ["auroc"]) == []  # nothing to draw: no empty figure
    assert not (tmp_path / "results_auroc.png").exists()


def test_duplicate_runs_keep_the_newest_and_warn(sweep, caplog):
    task, shots, seed = "prom_core", 10, 1
    better = dict(metric_values(task, shots, "genemask-10k", seed), accuracy=0.999)
    newer = write_result(sweep / "rerun", task, shots, seed, "genemask-10k", MODELS["genemask-10k"], "shipped",
                         metrics=better, finished_at="2024-06-02T08:00:00Z")
    older = write_result(sweep / "rerun-old", task, shots, seed, "genemask-10k", MODELS["genemask-10k"], "shipped",
                         metrics=dict(better, accuracy=0.0), finished_at="2024-05-30T08:00:00+02:00")
    with caplog.at_level(logging.WARNING, logger="gm.analysis.results"):
        rows = aggregate(collect([sweep]))
    row = next(r for r in rows if (r.task, r.shots, r.model) == (task, shots, "genemask-10k"))
    assert row.n_seeds == 3
    values = [metric_values(task, shots, "genemask-10k", s)["accuracy"] for s in SEEDS]
    values[seed] = 0.999
    assert row.mean["accuracy"] == pytest.approx(np.mean(values))
    assert row.std["accuracy"] == pytest.approx(np.std(values, ddof=1))
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "3 runs" in warning and str(newer) in warning and str(older) in warning


def test_mixed_test_sources_are_flagged(tmp_path):
    for seed, source in enumerate(["carved", "shipped"]):
        write_result(tmp_path, "cohn_enh", 10, seed, "m", "/x/hf", source)
    (row,) = aggregate(collect([tmp_path]))
    assert row.test_source == "mixed" and row.sources == {"carved": 1, "shipped": 1}
    text = to_markdown([row])
    assert "| cohn_enh ‡ |" in text and "\n‡ Mixed test sets" in text


@pytest.mark.parametrize(
    "content, needle",
    [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"), ('{"task": "prom_core"}', "missing required key")],
)
def test_malformed_or_incomplete_file_names_it(sweep, content, needle):
    bad = sweep / "day1" / "broken" / "results.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(content)
    with pytest.raises(GMError, match=needle) as err:
        collect([sweep])
    assert str(bad) in str(err.value)


def test_invalid_values_name_the_file(tmp_path):
    path = write_result(tmp_path, "prom_core", 10, 0, "m", None, "somewhere")
    with pytest.raises(GMError, match="test_source") as err:
        collect([tmp_path])
    assert str(path) in str(err.value)
    path.unlink()
    path = write_result(tmp_path, "prom_core", 10, 0, "m", None, "shipped", metrics={"accuracy": 0.5, "mcc": 0.1})
    with pytest.raises(GMError, match="f1_macro") as err:
        collect([path])  # a results.json path works as well as a folder
    assert str(path) in str(err.value)


def test_no_results_and_missing_folder_name_the_folders(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / ".tmp-run-x").mkdir()  # an unfinished atomic_directory: skipped
    write_result(tmp_path / "empty" / ".tmp-run-x", "prom_core", 10, 0, "m", None, "shipped")
    with pytest.raises(GMError, match="no results.json") as err:
        collect([tmp_path / "empty", tmp_path / "empty" / "sub"])
    assert str(tmp_path / "empty") in str(err.value) and str(tmp_path / "empty" / "sub") in str(err.value)
    with pytest.raises(GMError, match="no such file or folder") as err:
        collect([tmp_path / "nowhere"])
    assert str(tmp_path / "nowhere") in str(err.value)


def test_model_labels():
    assert model_label(None) == "random init"
    assert model_label("zhihan1996/DNA_bert_6") == "zhihan1996/DNA_bert_6"
    assert model_label("/logs/pretrain/runs/genemask-10k/hf") == "genemask-10k"
    assert model_label("/logs/pretrain/runs/genemask-10k/hf/") == "genemask-10k"
    assert model_label("/logs/pretrain/runs/genemask-10k/checkpoints/step=10000.ckpt") == "genemask-10k/step=10000"
    assert model_label("/logs/pretrain/multiruns/2024-05-01_12-00-00/3/hf") == "2024-05-01_12-00-00/3"
    assert model_label("/models/dnabert6") == "dnabert6"
    assert model_label("./weights/model.safetensors") == "model"


def test_cli_end_to_end(sweep, tmp_path, capsys):
    assert main(["results", str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| task | shots | model | seeds | accuracy |") and "† Carved test set" in printed
    for name in ["results.md", "results.csv", *[f"results_{m}.png" for m in METRICS]]:
        assert (sweep / name).stat().st_size > 0, name
    assert (sweep / "results.md").read_text().startswith("# Few-shot results\n\n| task |")
    with Image.open(sweep / "results_accuracy.png") as image:
        image.verify()
    assert not list(sweep.glob(".*.tmp"))  # atomic writes leave no temporaries

    out = tmp_path / "report"
    assert main(["results", str(sweep / "day1"), str(sweep / "day2"), "--out", str(out), "--metrics", "accuracy", "mcc"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.md", "results_accuracy.png", "results_mcc.png"]
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert len(rows) == 8 and "auroc_mean" not in rows[0] and "mcc_std" in rows[0]
    mean, _ = expected("prom_300", 10, None, "accuracy")
    row = next(r for r in rows if (r["task"], r["shots"], r["model"]) == ("prom_300", "10", "random init"))
    assert float(row["accuracy_mean"]) == pytest.approx(mean) and row["test_source"] == "carved"
    capsys.readouterr()

    (sweep / "day1" / "bad").mkdir()
    (sweep / "day1" / "bad" / "results.json").write_text("{")
    assert main(["results", str(sweep)]) == 2
    assert str(sweep / "day1" / "bad" / "results.json") in capsys.readouterr().err
    assert main(["results", str(tmp_path / "nothing-here")]) == 2


def test_null_or_nan_metric_is_left_out_and_colliding_labels_warn(tmp_path, caplog):
    write_result(tmp_path, "prom_core", 10, 0, "m", "/a/hf", "shipped", metrics={"accuracy": 0.5, "f1_macro": 0.5, "mcc": 0.1, "auroc": 0.7})
    path = write_result(tmp_path, "prom_core", 10, 1, "m", "/b/hf", "shipped", metrics={"accuracy": 0.7, "f1_macro": 0.5, "mcc": 0.3})
    path.write_text(path.read_text().replace('"mcc": 0.3', '"mcc": 0.3, "auroc": NaN'))
    with caplog.at_level(logging.WARNING, logger="gm.analysis.results"):
        (row,) = aggregate(collect([tmp_path]))
    assert row.count == {"accuracy": 2, "f1_macro": 2, "mcc": 2, "auroc": 1}
    assert row.mean["auroc"] == 0.7 and math.isnan(row.std["auroc"]) and row.mean["accuracy"] == pytest.approx(0.6)
    assert "different pretrained" in caplog.text and "/a/hf" in caplog.text and "/b/hf" in caplog.text


def test_paired_comparison_matches_a_loop_and_scipy(sweep):
    from scipy.stats import binomtest, wilcoxon

    from gm.analysis.results import paired_comparison

    records = collect([sweep])
    result = paired_comparison(records, "genemask-10k", "random init", "mcc")
    diffs = {}
    for task in TASKS:
        for shots in SHOTS:
            for seed in SEEDS:
                a = metric_values(task, shots, "genemask-10k", seed)["mcc"]
                b = metric_values(task, shots, None, seed)["mcc"]
                diffs[(task, shots, seed)] = a - b
    want = np.array(list(diffs.values()))
    np.testing.assert_allclose(np.sort(result.differences), np.sort(want))
    assert [(c["task"], c["shots"], c["n"]) for c in result.cells] == [(t, n, 3) for t in TASKS for n in SHOTS]
    first = [diffs[("prom_core", 10, s)] for s in SEEDS]
    assert result.cells[0]["mean"] == pytest.approx(np.mean(first)) and result.cells[0]["std"] == pytest.approx(np.std(first, ddof=1))
    assert (result.wins, result.losses) == (int((want > 0).sum()), int((want < 0).sum()))
    assert result.p_sign == pytest.approx(binomtest(result.wins, result.wins + result.losses).pvalue)
    assert result.p_wilcoxon == pytest.approx(wilcoxon(want).pvalue)
    text = result.to_markdown()
    assert "genemask-10k vs random init: mcc" in text and f"better in {result.wins}" in text
    with pytest.raises(GMError, match="no mcc results for model 'nope'"):
        paired_comparison(records, "nope", "random init")


def test_cli_writes_comparisons(sweep, tmp_path):
    assert main(["results", str(sweep), "--out", str(tmp_path / "out"), "--compare", "genemask-10k", "random init"]) == 0
    text = (tmp_path / "out" / "comparisons.md").read_text()
    assert "genemask-10k vs random init: accuracy" in text and "genemask-10k vs random init: mcc" in text


def test_chance_lines_and_no_panel_without_values(tmp_path, monkeypatch):
    """Dotted chance line per metric where it is known; a 3-class task gets no AUROC panel; no AUROC at all: no figure."""
    import gm.analysis.plots

    drawn: dict[str, list] = {}  # figure name -> [(panel title, chance line's y or None)] of the visible panels
    save = gm.analysis.plots.save_figure

    def spy(fig, path, *args, **kwargs):
        drawn[Path(path).name] = [
            (ax.get_title(), next((line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"), None))
            for ax in fig.axes if ax.get_visible()]
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(gm.analysis.plots, "save_figure", spy)
    for seed in (0, 1):
        write_result(tmp_path / "in", "prom_core", 10, seed, "m", "/a/hf", "shipped", label_names=["0", "1"])
        write_result(tmp_path / "in", "prom_300", 10, seed, "m", "/a/hf", "carved", label_names=["0", "1"])
        write_result(tmp_path / "in", "splice_40", 10, seed, "m", "/a/hf", "carved", label_names=["EI", "IE", "N"],
                     metrics={"accuracy": 0.5, "f1_macro": 0.4, "mcc": 0.3, "auroc": None})
    rows = aggregate(collect([tmp_path / "in"]))
    written = write_figures(rows, tmp_path / "out")
    assert [p.name for p in written] == [f"results_{m}.png" for m in METRICS]
    core, carved, splice = "prom_core", "prom_300 (carved test set)", "splice_40 (carved test set)"
    # accuracy and macro-F1: 1/C on the carved (class-balanced) test sets; the shipped one's balance is not recorded
    for metric in ("accuracy", "f1_macro"):
        assert drawn[f"results_{metric}.png"] == [(core, None), (carved, 0.5), (splice, pytest.approx(1 / 3))]
    assert drawn["results_mcc.png"] == [(core, 0.0), (carved, 0.0), (splice, 0.0)]
    assert drawn["results_auroc.png"] == [(core, 0.5), (carved, 0.5)]  # no empty splice_40 panel

    only_three_class = [r for r in rows if r.task == "splice_40"]
    assert write_figures(only_three_class, tmp_path / "three", ["mcc", "auroc"]) == [tmp_path / "three" / "results_mcc.png"]
    assert not (tmp_path / "three" / "results_auroc.png").exists()


def test_runs_on_different_data_are_never_merged(tmp_path, caplog):
    """Two custom files both called train.tsv: same task name, shots, model and seed, different data."""
    hashes = {"a": "a" * 64, "b": "b" * 64}
    for data, digest in hashes.items():
        for seed in (0, 1):
            write_result(tmp_path / data, "train", 10, seed, "m", "/x/hf", "given", data_sha256=digest,
                         metrics=dict(metric_values("train", 10, "m", seed), accuracy=0.6 if data == "a" else 0.9))
    write_result(tmp_path / "old", "prom_core", 10, 0, "m", "/x/hf", "shipped")  # no hash: an older results.json
    write_result(tmp_path / "new", "prom_core", 10, 1, "m", "/x/hf", "shipped", data_sha256="c" * 64)
    with caplog.at_level(logging.WARNING, logger="gm.analysis.results"):
        rows = aggregate(collect([tmp_path]))
    by_task = {row.task: row for row in rows}
    assert set(by_task) == {"prom_core", "train@aaaaaaaa", "train@bbbbbbbb"}
    assert by_task["train@aaaaaaaa"].mean["accuracy"] == pytest.approx(0.6) and by_task["train@aaaaaaaa"].seeds == [0, 1]
    assert by_task["train@bbbbbbbb"].mean["accuracy"] == pytest.approx(0.9) and by_task["train@bbbbbbbb"].seeds == [0, 1]
    assert by_task["prom_core"].seeds == [0, 1]  # one hash and a run without: the same data
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert not [w for w in warnings if "keeping the newest" in w]  # no run dropped as a duplicate
    assert any("2 different data sets" in w and "train@aaaaaaaa" in w for w in warnings)
