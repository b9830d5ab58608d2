"""`bash scripts/gpu_check.sh`: as far as a CPU allows: the clear refusal, the report, and commands that still compose."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, compose_train
from gm.bench.gpu_check import Step, run_check, steps


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_without_cuda_the_script_says_so_in_one_line_and_runs_nothing(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: no CUDA device") and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not out.exists()


def test_a_python_without_torch_is_one_line(tmp_path, monkeypatch, capsys):
    """Run outside the project's environment (no torch): say which Python and what to do, exit 2."""
    from gm.bench import gpu_check

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    assert gpu_check.main([str(tmp_path / "check")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {sys.executable} cannot import torch") and err.count("\n") == 1
    assert "activate the project's virtual environment" in err and not (tmp_path / "check").exists()


def test_every_step_runs_and_is_reported_even_after_a_failure(tmp_path):
    outcomes = {"a": (0, "3 passed in 1.0s\n"), "b": (1, "boom\n1 failed, 2 passed in 2.0s\n"), "c": (124, "(stopped after 5 s)")}
    plan = [Step(name, [name], 5, lambda out, text: {"seen": text.strip().splitlines()[-1]}) for name in outcomes]
    report = run_check(tmp_path, runner=lambda command, timeout: outcomes[command[0]], plan=plan)
    assert [s["name"] for s in report["steps"]] == ["a", "b", "c"] and report["ok"] is False
    assert [s["ok"] for s in report["steps"]] == [True, False, False]
    assert "boom" in report["steps"][1]["output_tail"] and "output_tail" not in report["steps"][0]
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == report
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| a | ok |" in table and "| b | FAILED (exit 1) |" in table and "| c | FAILED (exit 124) |" in table
    assert (tmp_path / "b.log").read_text() == "boom\n1 failed, 2 passed in 2.0s\n"


def test_the_check_commands_still_select_tests_and_compose(tmp_path):
    """Config or test renames would break the GPU check only on the day it runs: its commands are checked here."""
    plan = {s.name: s for s in steps(tmp_path)}
    assert list(plan) == ["cuda-tests", "no-host-sync", "bench-gpu", "train-dnabert"]
    for name in ("cuda-tests", "no-host-sync"):
        command = plan[name].command
        collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", *command[command.index("-k"):]],
                                   cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert collected.returncode == 0, collected.stdout[-2000:]
        assert "[cuda" in collected.stdout or "-cuda" in collected.stdout, name
    train = plan["train-dnabert"].command
    overrides = [a for a in train[2:] if not a.startswith("hydra.")]
    cfg = compose_train(tmp_path / "run", overrides)
    assert (cfg.trainer.max_steps, cfg.trainer.precision, cfg.model.hidden_size) == (100, "bf16-mixed", 768)
