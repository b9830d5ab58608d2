"""gm.bench runs every part with tiny settings and writes sane JSON; gm.models.flops counts what it says."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForMaskedLM

from gm.bench import cli, common, training
from gm.models.flops import PEAK_BF16_FLOPS, mfu, peak_flops, training_flops_per_token

CAN_READ_PEAK_RSS = common._reset_peak_rss() and Path("/proc/self/status").is_file()


def run_bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    assert cli.main([*args, "--repeats", "1", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def check_rows(report: dict, part: str, expected: int, baseline_memory: bool = True) -> list[dict]:
    """Rows of ``part``: positive, finite rates and ratios, and memory fields for both candidates."""
    rows = [r for r in report["rows"] if r["part"] == part]
    assert len(rows) == expected, rows
    for r in rows:
        for key in ("ours", "baseline", "ratio"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        for key in ("ours_peak_mib", "ours_delta_mib", "baseline_peak_mib", "baseline_delta_mib"):
            assert key in r
            if CAN_READ_PEAK_RSS and (baseline_memory or key.startswith("ours")):
                assert math.isfinite(r[key]), (key, r)
        if CAN_READ_PEAK_RSS:
            assert r["ours_peak_mib"] > 0 and (r["baseline_peak_mib"] > 0 or not baseline_memory)
    return rows


# ------------------------------------------------------------------------------------------ parts
def test_tokenizer_and_npmi_parts(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "--parts", "tokenizer", "npmi", "--windows", "20", "--npmi-bases", "20000")
    check_rows(report, "tokenizer", 2)
    npmi = [r for r in report["rows"] if r["part"] == "npmi"]
    assert len(npmi) == 2 and npmi[0]["ratio"] > 0 and math.isnan(npmi[1]["baseline"])


def test_data_part_times_worker_counts_and_adds_targets(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "--parts", "data", "--windows", "30", "--data-batches", "14")
    rows = check_rows(report, "data", 6)
    assert sorted({r["num_workers"] for r in rows}) == [0, 1, 2]
    assert {r["unit"] for r in rows} == {"windows/s", "tokens/s"}
    (target,) = check_rows(report, "targets", 1, baseline_memory=False)  # consumption is computed
    assert 5.5e8 < target["flops_per_token"] < 6.5e8
    assert target["baseline"] == pytest.approx(0.4 * 989e12 / target["flops_per_token"])
    assert target["met"] == (target["ratio"] >= 10)
    assert report["machine"]["cpus"] and report["options"]["data_batches"] == 14


def test_train_part_compares_lightning_with_plain_loop_and_hf_trainer(tmp_path: Path, capsys) -> None:
    report = run_bench(tmp_path, "--parts", "train", "--models", "tiny", "--steps", "4", "--max-kmers", "62")
    rows = check_rows(report, "train", 4)
    assert {r["baseline_name"].split()[0] for r in rows} == {"plain", "HF"}
    assert {r["unit"] for r in rows} == {"steps/s", "tokens/s"}
    plain = [r for r in rows if "overhead_pct" in r]
    assert len(plain) == 2
    for r in plain:
        assert r["overhead_pct"] == pytest.approx((1 / r["ratio"] - 1) * 100)
        assert r["steps_timed"] == 2 and r["tokens_timed"] > 0
    printed = capsys.readouterr().out
    assert "Lightning overhead" in printed and "GPU available" not in printed


def test_probe_part_sets_one_probe_beside_the_steps_between_probes(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "--parts", "probe", "--models", "tiny", "--steps", "4", "--max-kmers", "62",
                       "--probe-tasks", "splice_40", "--probe-shots", "5", "--probe-draws", "2", "--probe-test-size", "30",
                       "--probe-every", "100")
    (r,) = [r for r in report["rows"] if r["part"] == "probe"]
    assert r["every_n_steps"] == 100 and r["step_seconds"] > 0 and r["ours"] > 0
    assert r["baseline"] == pytest.approx(100 * r["step_seconds"])
    assert r["probe_share_pct"] == pytest.approx(100 * r["ours"] / (r["ours"] + r["baseline"]))
    assert "splice_40; 5 shots x 2 draws, test 30" in r["ours_name"]


def test_padding_part_measures_share_length_and_gain(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "--parts", "padding", "--models", "tiny", "--padding-batches", "2",
                       "--max-kmers", "62")
    share, length, gain = check_rows(report, "padding", 3)
    assert share["ours_stats"]["windows"] == share["baseline_stats"]["windows"]  # bucketing keeps every window
    assert share["ours"] < share["baseline"]  # and pads less
    assert 0 <= share["ours_stats"]["padding_share_mean_per_batch"] < 1
    assert length["ratio"] == pytest.approx(1.0)
    assert share["ours_stats"]["window_bases_quartiles"] == share["baseline_stats"]["window_bases_quartiles"]
    assert gain["unit"] == "tokens/s" and gain["positions"]["bucketed"] <= gain["positions"]["naive"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_gpu_part_skips_cleanly_without_cuda(tmp_path: Path, capsys) -> None:
    report = run_bench(tmp_path, "--parts", "gpu")
    (skipped,) = report["rows"]
    assert skipped["part"] == "gpu" and skipped["skipped"] == "no CUDA device"
    assert "gpu: skipped (no CUDA device)" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_part_on_cuda(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "--parts", "gpu", "--gpu-models", "logo", "--gpu-batch", "4", "--gpu-steps", "5")
    rows = [r for r in report["rows"] if r["part"] == "gpu"]
    assert [r["unit"] for r in rows] == ["steps/s", "tokens/s", "MFU"]
    for r in rows[:2]:
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
        assert r["ours_peak_mib"] > 0 and r["baseline_peak_mib"] > 0
    if rows[0]["peak_bf16_flops"]:
        assert 0 < rows[2]["ours"] < 1 and 0 < rows[2]["baseline"] < 1


# ------------------------------------------------------------------------------------------ helpers
@pytest.mark.skipif(not CAN_READ_PEAK_RSS, reason="needs /proc/self/clear_refs")
def test_peak_memory_sees_an_allocation_freed_before_it_returns() -> None:
    seconds, peak, delta = common.peak_memory(lambda: np.ones(64 * 2**20 // 8).sum())
    assert seconds > 0 and peak > 64 and delta > 48


def test_step_clock_needs_a_timed_step() -> None:
    with pytest.raises(ValueError):
        common.StepClock(torch.device("cpu"), steps=2, warmup=2)
    clock = common.StepClock(torch.device("cpu"), steps=4, warmup=2)
    for step in range(4):
        clock.tick(step)
    assert clock.seconds >= 0


# ------------------------------------------------------------------------------------------ flops
TOY = {"hidden_size": 2, "num_hidden_layers": 1, "intermediate_size": 4}


def test_training_flops_of_a_one_layer_toy_by_hand() -> None:
    # forward multiply-adds per position: Q, K, V, O 4 * 2 * 2 = 16; FFN 2 * 2 * 4 = 16; scores and
    # values 2 * (seq 3 * hidden 2) = 12: 44, so 88 FLOPs; training = 3x = 264. Head: (2 * 2 + 2 * 5)
    # multiply-adds = 28 FLOPs forward, 84 training, on half the positions: 42.
    assert training_flops_per_token(TOY, seq_len=3, vocab_size=5, masked_fraction=0.5) == 264 + 42
    assert training_flops_per_token(TOY, seq_len=3, vocab_size=5, head_on_masked_only=False) == 264 + 84


def test_training_flops_match_torch_flop_counter_on_bert() -> None:
    encoder = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    model = BertForMaskedLM(BertConfig(vocab_size=101, max_position_embeddings=64, **encoder))
    ids = torch.randint(5, 100, (3, 40))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    per_position = training_flops_per_token(encoder, seq_len=40, vocab_size=101, head_on_masked_only=False)
    assert counter.get_total_flops() == pytest.approx(per_position * ids.numel(), rel=1e-6)


def test_dnabert_flops_per_token() -> None:
    dnabert = training.model_config("dnabert")
    flops = training_flops_per_token(dnabert, 512, common.VOCAB_SIZE)
    assert 5.5e8 < flops < 6.5e8
    assert training_flops_per_token(dnabert, 512, common.VOCAB_SIZE, head_on_masked_only=False) > flops


@pytest.mark.parametrize(
    "name, expected",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("NVIDIA A10G", None),
        ("Tesla T4", None),
    ],
)
def test_peak_flops_by_device_name(name: str, expected: float | None) -> None:
    assert peak_flops(name) == expected


def test_mfu_arithmetic() -> None:
    assert mfu(1e5, 1e9, 1e15) == pytest.approx(0.1)
    assert mfu(0.4 * 989e12 / 5.7e8, 5.7e8, PEAK_BF16_FLOPS["H100"]) == pytest.approx(0.4)
    assert math.isnan(mfu(1e5, 1e9, None))
