"""`python analyze.py features`: the geometry statistics, the [CLS]/mean poolings, and the command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose_train, run_cli
from gm.analysis.cli import main as analyze
from gm.analysis.features import feature_statistics
from gm.probe import ProbeCallback
from gm.train import train


def test_a_collapsed_representation_has_rank_one_and_cosine_one():
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=g)
    x = 5 * direction + torch.randn(400, 1, generator=g) * direction  # every row on one line, away from 0
    stats = feature_statistics(x, torch.arange(400) % 2)
    assert stats["effective_rank"] == pytest.approx(1.0, abs=1e-6) and stats["top_pc"] == pytest.approx(1.0, abs=1e-6)
    assert stats["cosine"] > 0.9


def test_an_isotropic_representation_has_full_rank_and_no_class_signal():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 8, generator=g, dtype=torch.float64)
    stats = feature_statistics(x, torch.arange(4000) % 2)
    assert stats["effective_rank"] == pytest.approx(8, rel=0.05) and stats["top_pc"] < 0.2
    assert abs(stats["cosine"]) < 0.01 and stats["between_class"] < 0.01
    assert stats["norm"] == pytest.approx(8**0.5, rel=0.05)


def test_separated_classes_carry_the_variance_and_gc_correlation_is_found():
    labels = torch.arange(200) % 2
    x = torch.zeros(200, 4, dtype=torch.float64)
    x[:, 0] = labels * 10.0 + torch.linspace(0, 0.1, 200)
    stats = feature_statistics(x, labels, gc=0.4 + 0.2 * labels.double() + 0.0001 * torch.arange(200))
    assert stats["between_class"] > 0.99 and stats["pc1_gc"] > 0.99


def test_constant_features_have_undefined_shares_not_zero():
    stats = feature_statistics(torch.ones(10, 3), torch.arange(10) % 2, gc=torch.rand(10))
    assert stats["effective_rank"] is None and stats["top_pc"] is None and stats["between_class"] is None
    assert stats["pc1_gc"] is None and stats["cosine"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("features")
    overrides = [a for a in TINY if not a.startswith(("model.max_position_embeddings", "export_hf"))]
    cfg = compose_train(tmp, overrides + ["model.max_position_embeddings=80", "export_hf=true", "logger=none", "trainer.max_steps=3"])
    train(cfg)
    return Path(cfg.paths.output_dir)


def test_cls_and_mean_pooling_do_not_depend_on_batching(pretrained_run):
    """Sorted, padded batches give each row the features it has alone: padding never leaks in."""
    from types import SimpleNamespace

    from gm.data.tokenizer import KmerTokenizer
    from gm.models.pretrained import load_classifier

    model, info = load_classifier(str(pretrained_run / "hf"), num_labels=2, dropout=0.0)
    model.eval()
    holder = SimpleNamespace(model=model, device=torch.device("cpu"), tokenizer=KmerTokenizer(info.k, 80))
    probe = ProbeCallback(tasks=["prom_core"], shots=3, draws=1, test_size=6, batch_tokens=200)  # several rows a batch
    probe.setup(None, holder, "fit")
    task = probe.tasks[0]
    cls, mean = probe.features(task, holder, "cls"), probe.features(task, holder, "mean")
    for row in range(task.input_ids.shape[0]):
        n = int(task.lengths[row])
        with torch.no_grad():
            hidden = model.bert(input_ids=task.input_ids[row : row + 1, :n]).last_hidden_state[0].double()
        torch.testing.assert_close(cls[row], hidden[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mean[row], hidden.mean(0), atol=1e-5, rtol=1e-5)


def test_features_command_reports_every_model_and_pooling(pretrained_run, tmp_path, capsys):
    out = tmp_path / "features"
    code = analyze(["features", f"tiny={pretrained_run}", "--random-init", "--rows", "20", "--shots", "4", "--draws", "2",
                    "--out", str(out)])
    assert code == 0
    records = json.loads((out / "features.json").read_text())
    assert [(r["model"], r["pooling"]) for r in records] == [("tiny", "mean"), ("tiny", "cls"), ("random init", "mean"), ("random init", "cls")]
    for r in records:
        assert r["rows"] == 20 and r["width"] == 32 and 1 <= r["effective_rank"] <= 32
        assert r["probe_mcc"] is None or -1 <= r["probe_mcc"] <= 1
    assert "| tiny | cls |" in (out / "features.md").read_text() and "| random init | mean |" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    ([], "give at least one model"),
    (["/no/such/model"], "pretrained=/no/such/model: no such checkpoint or directory"),
    (["--random-init"], "give at least one model"),
])
def test_features_command_bad_input_is_one_line(tmp_path, args, message):
    result = run_cli("analyze.py", ["features", *args], tmp_path, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
