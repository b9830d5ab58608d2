"""End-to-end pretraining through the real configs: composition, outputs, seeding, resume, DDP, errors."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, ROOT, SAMPLE_FASTA, TINY, compose_train, run_cli, write_fasta
from gm.models.mlm import MLMModule
from gm.train import build, resume_path, train
from gm.utils import GMError


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def train_losses(run_dir: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in read_metrics(run_dir) if r.get("train/loss")}


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("model", ["tiny", "logo", "dnabert"])
@pytest.mark.parametrize("masking", sorted(p.stem for p in (CONF / "masking").glob("*.yaml")))
def test_every_model_and_masking_config_builds(tmp_path, model, masking):
    cfg = compose_train(tmp_path, [f"model={model}", f"masking={masking}", "logger=none"])
    module = MLMModule(OmegaConf.to_container(cfg.model), instantiate(cfg.masking, k=cfg.k), k=cfg.k)
    config = module.model.config
    assert config.vocab_size == 4101 and config.max_position_embeddings == 512
    assert config._attn_implementation == "sdpa"
    assert module.masking.name == masking.split("_position")[0].split("_released")[0]
    params = sum(p.numel() for p in module.model.parameters())
    if model == "dnabert":  # BERT-base with a 4,101-token vocabulary
        assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (12, 768, 12)
        assert 85e6 < params < 95e6
    if model == "logo":
        assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (2, 256, 8, 3072)
        assert config.hidden_dropout_prob == 0.0


def test_trainer_configs(tmp_path):
    gpu = compose_train(tmp_path, ["trainer=gpu", "trainer.devices=4"])
    assert gpu.trainer.precision == "bf16-mixed" and gpu.trainer.accelerator == "gpu" and gpu.trainer.strategy == "auto"
    cpu = compose_train(tmp_path, ["trainer=cpu"])
    assert cpu.trainer.accelerator == "cpu" and cpu.trainer.max_epochs == -1
    slurm = compose_train(tmp_path, ["hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4", "trainer.num_nodes=2"])
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)


#: fine-tuning experiments and the grid each sweeps: (data, shots, seeds)
FINETUNE_EXPERIMENTS = {
    "paper_grid": ("prom_core,prom_300,cohn_enh,splice_40", "10,50,100,500,1000", "0,1,2,3,4"),
    "comparison_finetune": ("prom_core,prom_300,cohn_enh,splice_40", "10,50,100", "0,1,2"),
    "sample_efficiency_finetune": ("prom_core,prom_300", "10,100", "0,1,2"),
}


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_experiment_configs_compose(tmp_path, experiment):
    if experiment in FINETUNE_EXPERIMENTS:
        cfg = compose_train(tmp_path, [f"experiment={experiment}"], config_name="finetune")
        assert cfg.skip_unavailable is True
        params = cfg.hydra.sweeper.params
        assert (params.data, params.shots, params.seed) == FINETUNE_EXPERIMENTS[experiment]
        if experiment == "sample_efficiency_finetune":
            assert cfg.finetune.lr == 5e-4  # chosen on validation shots (the config's comment)
    else:
        cfg = compose_train(tmp_path, [f"experiment={experiment}"])
        assert cfg.trainer.max_steps > 0
    assert cfg.task_name == experiment


def test_default_config_is_the_embedded_cpu_run(tmp_path):
    cfg = compose_train(tmp_path)
    assert Path(cfg.data.fasta) == SAMPLE_FASTA and SAMPLE_FASTA.is_file()
    assert cfg.trainer.accelerator == "cpu" and cfg.model.hidden_size == 64
    assert set(cfg.logger) == {"csv", "wandb"} and cfg.logger.wandb.offline is True


# ------------------------------------------------------------------------------------------ runs
def test_tiny_run_writes_checkpoints_csv_wandb_and_hf_export(tmp_path):
    cfg = compose_train(tmp_path, TINY + ["export_hf=true"])
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.ckpt", "step_0000003.ckpt", "step_0000006.ckpt"}
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    rows = read_metrics(run)
    columns = set(rows[0])
    for name in ["train/loss", "train/accuracy", "train/perplexity", "train/masked_fraction", "train/tokens_per_sec", "val/loss", "val/accuracy", "val/perplexity", "val/masked_fraction"]:
        assert name in columns, name
        assert any(r[name] for r in rows), name
    assert any(c.startswith("lr-AdamW") for c in columns)
    fractions = [float(r["train/masked_fraction"]) for r in rows if r["train/masked_fraction"]]
    assert 0.05 < sum(fractions) / len(fractions) < 0.3
    assert all(v == v for v in metrics.values())  # no NaN
    assert list((run / "wandb").glob("offline-run-*")), "W&B should have written an offline run"
    # the Hugging Face export loads in transformers and matches the Lightning module
    from transformers import BertForMaskedLM, BertTokenizer

    meta = json.loads((run / "hf" / "gm_pretraining.json").read_text())
    assert meta["pretrain_steps"] == 6 and 6 * 8 * 5 < meta["pretrain_tokens"] <= 6 * 8 * 66  # real tokens, 6 batches of 8
    hf = BertForMaskedLM.from_pretrained(run / "hf").eval()
    tok = BertTokenizer.from_pretrained(run / "hf")
    module = MLMModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", masking=instantiate(cfg.masking, k=6)).eval()
    ids = torch.tensor([tok("ACGTAC CGTACG GTACGT TACGTA")["input_ids"]])
    assert ids[0, 1].item() == module.tokenizer.encode("ACGTACGTA").input_ids[0, 1].item()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, module.model(input_ids=ids).logits)


def test_seed_zero_is_honoured(tmp_path):
    def losses(seed: int, name: str) -> dict[int, float]:
        cfg = compose_train(tmp_path / name, TINY + [f"seed={seed}", "logger=csv", "trainer.max_steps=3"])
        train(cfg)
        return train_losses(Path(cfg.paths.output_dir))

    first, again, other = losses(0, "a"), losses(0, "b"), losses(1, "c")
    assert first == again
    assert first != other


@pytest.mark.parametrize(
    "options", ["{backend: eager}", pytest.param("true", marks=pytest.mark.slow)], ids=["dynamo-eager", "inductor"]
)
def test_compile_switch_trains_the_same_model(tmp_path, options):
    """``compile=`` compiles the encoder in place: checkpoint keys unchanged, losses as eager.

    The dynamo/eager backend checks the wiring in seconds; the inductor one (a C++ compiler on
    CPU) is slow and runs with ``-m slow``."""
    common = TINY + ["logger=csv", "trainer.max_steps=3", "model.hidden_dropout_prob=0.0"]
    eager = compose_train(tmp_path / "eager", common)
    train(eager)
    compiled = compose_train(tmp_path / "compiled", common + [f"compile={options}"])
    datamodule, module, trainer = build(compiled)
    trainer.fit(module, datamodule=datamodule)
    assert module.model.bert._compiled_call_impl is not None
    want, got = train_losses(Path(eager.paths.output_dir)), train_losses(Path(compiled.paths.output_dir))
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-5)
    state = torch.load(Path(compiled.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert not [key for key in state if "_orig_mod" in key]
    assert MLMModule.load_from_checkpoint(
        Path(compiled.paths.output_dir) / "checkpoints" / "last.ckpt", masking=instantiate(compiled.masking, k=6)
    ).hparams.compile


@pytest.mark.parametrize("masking", ["genemask", "genemask_released", "random_span", "global_pmi"])
def test_genemask_strategies_train(tmp_path, masking):
    cfg = compose_train(tmp_path, TINY + [f"masking={masking}", "logger=csv", "trainer.max_steps=6"])
    metrics = train(cfg)
    # per batch the share varies (a bucketed batch of the shortest windows may get no centre at all)
    fractions = [float(r["train/masked_fraction"]) for r in read_metrics(Path(cfg.paths.output_dir)) if r["train/masked_fraction"]]
    assert len(fractions) == 6 and 0.05 < sum(fractions) / len(fractions) < 0.35
    assert metrics["train/loss"] == metrics["train/loss"]


def test_genemask_takes_a_ranking_csv(tmp_path):
    ranking = tmp_path / "ranking.csv"
    kmers = ["".join(p) for p in __import__("itertools").product("ACGT", repeat=6)]
    ranking.write_text("ngram,count,pmi,score,rank\n" + "".join(f"{g},1,0,0,{i + 1}\n" for i, g in enumerate(kmers)))
    cfg = compose_train(tmp_path, TINY + ["masking=genemask", f"masking.ranking={ranking}", "logger=none"])
    _, module, _ = build(cfg)
    assert module.masking.rank_table[5].item() == 1  # id 5 is AAAAAA, ranked first in this file


def test_kmer_size_flows_from_one_setting(tmp_path, small_fasta):
    cfg = compose_train(tmp_path, TINY + ["k=4", f"data.fasta={small_fasta}", "logger=none", "trainer.max_steps=2"])
    datamodule, module, _ = build(cfg)
    assert datamodule.tokenizer.k == module.tokenizer.k == module.masking.k == 4
    assert module.model.config.vocab_size == 4**4 + 5


# ------------------------------------------------------------------------------------------ resume
def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"run ended (rc={process.returncode}) before {path.name} appeared:\n{process.stderr.read()}")
        if time.time() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout}s")
        time.sleep(0.02)


def kill_at_checkpoint(tmp_path: Path, args: list[str], step: int) -> Path:
    """Run ``train.py <args>`` in ``tmp_path/killed``, SIGKILL it once ``step_<step>.ckpt`` exists; its checkpoints folder."""
    env = dict(os.environ, GM_CACHE_DIR=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    killed = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={tmp_path / 'killed'}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    checkpoints = tmp_path / "killed" / "checkpoints"
    _wait_for(checkpoints / f"step_{step:07d}.ckpt", killed)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    return checkpoints


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, small_fasta):
    """Kill a run mid-way with SIGKILL, resume from last.ckpt: the losses continue exactly.

    The small genome has ~20 batches an epoch, so the runs cross epoch boundaries; two DataLoader
    workers and dropout make sure the data stream and the RNG streams are restored, not re-drawn.
    """
    common = TINY + [
        f"data.fasta={small_fasta}",
        "data.split_block=2000",
        "data.num_workers=2",
        "data.reverse_complement=0.5",
        "trainer.max_steps=40",
        "trainer.val_check_interval=10",
        "callbacks.model_checkpoint.every_n_train_steps=5",
        "logger=csv",
    ]
    full = run_cli("train.py", common + [f"hydra.run.dir={tmp_path / 'full'}"], tmp_path)
    assert full.returncode == 0, full.stderr
    expected = train_losses(tmp_path / "full")
    assert sorted(expected) == list(range(40))

    last = kill_at_checkpoint(tmp_path, common, 25) / "last.ckpt"
    resumed_from = torch.load(last, weights_only=False)["global_step"]
    assert 20 <= resumed_from < 40, "the kill should land mid-run"  # 20 if it hit while last.ckpt was written

    resumed = run_cli("train.py", common + [f"hydra.run.dir={tmp_path / 'resumed'}", f"ckpt_path={last}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    got = train_losses(tmp_path / "resumed")
    assert sorted(got) == list(range(resumed_from, 40))
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), f"step {step}"


def test_sigterm_exits_non_zero_and_names_the_checkpoint(tmp_path, small_fasta):
    """A preempted job (SIGTERM) must not look finished to its launcher: exit 143 and say how to resume."""
    run = tmp_path / "run"
    env = dict(os.environ, GM_CACHE_DIR=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *TINY, f"data.fasta={small_fasta}", "data.split_block=2000",
         "trainer.max_steps=100000", "logger=csv", f"hydra.run.dir={run}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_for(run / "checkpoints" / "step_0000003.ckpt", proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "error: training stopped by SIGTERM; resume with ckpt_path=" in err
    assert "Traceback" not in err


def test_ckpt_path_auto_resumes_from_the_run_folder(tmp_path):
    cfg = compose_train(tmp_path, TINY + ["ckpt_path=auto", "logger=csv", "trainer.max_steps=3"])
    assert resume_path(cfg) is None  # nothing there yet: a fresh start
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert resume_path(cfg) == str(last)
    cfg.trainer.max_steps = 6
    train(cfg)  # the same command, longer: continues from step 3
    assert torch.load(last, weights_only=False)["global_step"] == 6
    assert sorted(train_losses(Path(cfg.paths.output_dir))) == list(range(6))
    for value in (None, "x.ckpt"):
        cfg.ckpt_path = value
        assert resume_path(cfg) == value


# ------------------------------------------------------------------------------------------ DDP
def test_ddp_two_cpu_processes(tmp_path):
    """Real DDP: 2 processes, gloo, through the user's command line."""
    args = TINY + [
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.max_steps=20",
        "trainer.val_check_interval=10",
        "callbacks.model_checkpoint.every_n_train_steps=10",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'ddp'}",
    ]
    result = run_cli("train.py", args, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    assert "All distributed processes registered. Starting with 2 processes" in result.stderr + result.stdout
    checkpoint = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 20


# ------------------------------------------------------------------------------------------ bad input
def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp_path / "empty.fa"
    empty.write_bytes(b"")
    png = tmp_path / "image.fa"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    all_n = write_fasta(tmp_path / "all_n.fa", {"chrN": "N" * 5000})
    return {
        "missing": ([f"data.fasta={tmp_path / 'nope.fa'}"], "nope.fa: FASTA file not found"),
        "empty": ([f"data.fasta={empty}"], "empty.fa: FASTA file is empty"),
        "not_sequence": ([f"data.fasta={png}"], "image.fa: not a FASTA file"),
        "no_usable_sequence": ([f"data.fasta={all_n}"], "all_n.fa: no usable sequence"),
        "window_too_long": (["data.max_kmers=600", "model=tiny"], "data.max_kmers=600"),
        "misspelt_config": (["model=dnabrt"], "Could not find 'model/dnabrt'"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs(Path("/tmp"))))
def test_bad_input_fails_with_one_clear_message(tmp_path, case):
    overrides, message = _bad_inputs(tmp_path)[case]
    result = run_cli("train.py", [*overrides, "logger=csv", "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]
    if case != "misspelt_config":
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
    cache = tmp_path / "cache" / "genome"
    left = [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] if cache.exists() else []
    assert not left, f"left behind: {left}"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_input_in_process_raises_gmerror(tmp_path):
    cfg = compose_train(tmp_path, TINY + ["data.max_kmers=600", "logger=none"])
    with pytest.raises(GMError, match="max_position_embeddings"):
        build(cfg)


# ------------------------------------------------------------------------------------------ sweeps
def test_multirun_jobs_get_their_own_folders_and_wandb_runs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "trainer.max_steps=2", "trainer.val_check_interval=2", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    result = run_cli("train.py", args, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    runs = [next((job / "wandb").glob("offline-run-*")) for job in jobs]
    assert runs[0].name != runs[1].name
    for job, seed in zip(jobs, (0, 1)):
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert (job / "csv" / "metrics.csv").is_file()
        assert OmegaConf.load(job / ".hydra" / "config.yaml").seed == seed


def test_the_step_bar_counts_on_across_an_epoch_without_a_burst():
    """Lightning resets the bar each epoch; the step count goes on from there and the rate counts only new steps."""
    import time

    from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

    from gm.callbacks import continue_count

    bar = Tqdm(total=12000, file=io.StringIO(), mininterval=0)
    bar.update(1737)
    bar.reset(total=12000)  # what Lightning does at the next epoch's start
    continue_count(bar, 1737)
    time.sleep(0.05)
    bar.update(3)
    info = bar.format_dict
    rate = (info["n"] - info["initial"]) / info["elapsed"]
    assert info["n"] == 1740 and rate < 1000  # was 1740 steps in ~0.05 s: tens of thousands of it/s
    assert "1740/12000" in bar.__str__()
    bar.close()


def test_bf16_mixed_precision_trains_on_cpu_under_autocast(tmp_path, monkeypatch):
    """The mixed-precision path (trainer=gpu's bf16-mixed) tested without a GPU: CPU autocast, finite losses."""
    import math

    seen: list[tuple[bool, torch.dtype]] = []
    original = MLMModule.training_step

    def recording_step(self, batch, batch_idx):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(MLMModule, "training_step", recording_step)
    cfg = compose_train(tmp_path, TINY + ["trainer.precision=bf16-mixed", "trainer.max_steps=3", "logger=csv", "masking=genemask"])
    train(cfg)
    assert seen and all(enabled and dtype == torch.bfloat16 for enabled, dtype in seen)
    losses = train_losses(Path(cfg.paths.output_dir))
    assert losses and all(math.isfinite(v) for v in losses.values())
    val = [float(r["val/loss"]) for r in read_metrics(Path(cfg.paths.output_dir)) if r.get("val/loss")]
    assert val and all(math.isfinite(v) for v in val)
