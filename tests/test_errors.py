"""The entry points' error boundary: one line, a non-zero exit, no traceback, no empty run folder left behind."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from conftest import CONF, TINY, compose_train, run_cli
from gm.config import TYPED_KEYS, check_config, exit_on_user_error, run_entry, user_error
from gm.utils import GMError


def one_error_line(result) -> str:
    """The run failed with exactly one ``error: ...`` line on stderr and no traceback anywhere."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def run_folders(tmp_path: Path, task: str = "pretrain") -> list[Path]:
    runs = tmp_path / "logs" / task / "runs"
    return sorted(runs.iterdir()) if runs.is_dir() else []


# ------------------------------------------------------------------------------------------ through the command line
@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["seed=abc"], r"error: seed=abc is not a whole number"),
        (["trainer.max_steps=abc"], r"error: trainer\.max_steps=abc is not a whole number"),
        (["trainer.max_steps=-5"], r"error: trainer\.max_steps=-5 is below -1"),
        # a GMError raised in the gm.accumulation resolver, inside OmegaConf's and Hydra's errors; with
        # the default loggers (the later logger= wins), so train.py has written wandb/run_id by then
        (["global_batch_size=7", "data.batch_size=2", "logger=default"], r"error: global_batch_size=7 is not a multiple of data\.batch_size=2"),
        (["+trainer.no_such_option=1"], r"error: trainer: .*unexpected keyword argument 'no_such_option'"),
    ],
    ids=["seed", "max_steps", "max_steps_range", "accumulation", "unknown_trainer_key"],
)
def test_bad_value_is_one_line_naming_the_key(tmp_path, overrides, expected):
    result = run_cli("train.py", ["logger=csv", *overrides], tmp_path, timeout=180)
    assert re.match(expected, one_error_line(result)), result.stderr
    assert run_folders(tmp_path) == [], "a run that failed before training left its folder behind"


def test_finetune_bad_value_is_one_line(tmp_path):
    result = run_cli("finetune.py", ["shots=ten", "logger=none"], tmp_path, timeout=180)
    assert one_error_line(result).startswith("error: shots=ten is not a whole number")
    assert run_folders(tmp_path, "finetune") == []


def test_unwritable_log_folder_is_one_line(tmp_path):
    """The run folder is made while Hydra resolves ``hydra.run.dir``, before ``run_entry``: still one line."""
    import os
    import subprocess
    import sys

    (tmp_path / "a_file").write_text("not a folder")
    env = dict(os.environ, GM_LOG_DIR=str(tmp_path / "a_file" / "logs"), GM_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, str(CONF.parent / "train.py"), "logger=csv"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=180)
    line = one_error_line(result)
    assert "cannot create the run folder" in line and "GM_LOG_DIR" in line, line


def test_hydra_full_error_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    result = run_cli("train.py", ["seed=abc", "logger=none"], tmp_path, timeout=180)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "seed=abc is not a whole number" in result.stderr


# ------------------------------------------------------------------------------------------ the checks, in process
def test_every_shipped_config_passes_the_type_checks(tmp_path):
    finetuning = {"paper_grid", "comparison_finetune"}
    configs = [compose_train(tmp_path, []), compose_train(tmp_path, [], "finetune"), compose_train(tmp_path, ["shots=500"], "finetune")]
    for experiment in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")):
        configs.append(compose_train(tmp_path, [f"experiment={experiment}"], "finetune" if experiment in finetuning else "train"))
    for cfg in configs:
        check_config(cfg)


def test_every_typed_key_exists_in_a_config(tmp_path):
    """A misspelt entry in TYPED_KEYS would silently check nothing."""
    train, finetune = compose_train(tmp_path, []), compose_train(tmp_path, [], "finetune")
    missing = [key for key in TYPED_KEYS if all(OmegaConf.select(c, key, default="<absent>") == "<absent>" for c in (train, finetune))]
    assert missing == []


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=0", "data.batch_size=0 is below 1"),
        ("data.batch_size=2.5", "data.batch_size=2.5 is not a whole number"),
        ("export_hf=yes", "export_hf=yes is not true or false"),
        ("optim.lr=fast", "optim.lr=fast is not a number"),
        ("seed=true", "seed=true is not a whole number or null"),
        ("trainer.devices=two", "trainer.devices=two is not a device count"),
        ("trainer.devices=0", "trainer.devices=0 is below 1"),
    ],
)
def test_check_config_names_key_and_value(tmp_path, override, message):
    with pytest.raises(GMError, match=re.escape(message)):
        check_config(compose_train(tmp_path, [override]))


def test_user_error_unwraps_a_gmerror_from_omegaconf_and_hydra():
    cfg = OmegaConf.create({"a": "${gm.accumulation:7,2,1,1,cpu}"})
    with pytest.raises(Exception) as resolving:
        cfg.a
    assert not isinstance(resolving.value, GMError)  # OmegaConf's InterpolationResolutionError, twice over
    assert user_error(resolving.value).startswith("global_batch_size=7 is not a multiple")
    try:
        try:
            raise GMError("data.fasta=x.fa: FASTA file not found")
        except GMError as inner:
            raise InstantiationException("Error in call to target 'gm.data.genome.GenomeDataModule':\nfull_key: data") from inner
    except InstantiationException as outer:
        assert user_error(outer) == "data.fasta=x.fa: FASTA file not found"
    assert user_error(ValueError("a bug")) is None  # bugs keep their traceback


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_disk_errors_are_one_line_naming_the_file(code):
    try:
        try:
            raise OSError(code, "boom", "/runs/x/checkpoints/last.ckpt")
        except OSError as err:
            raise RuntimeError("writing the checkpoint failed") from err
    except RuntimeError as wrapped:
        message = user_error(wrapped)
    assert message.startswith("/runs/x/checkpoints/last.ckpt: ") and "GM_LOG_DIR" in message and "\n" not in message


def test_a_read_only_output_folder_is_one_line(tmp_path):
    """A real EACCES/EROFS: analyze.py writing into /sys (read-only, or no place for files, even for root)."""
    try:
        open("/sys/fs/.probe", "wb").close()
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EROFS):
            pytest.skip(f"/sys/fs gives {err!r} here")
    else:
        pytest.skip("/sys/fs is writable here")
    result = run_cli("analyze.py", ["masks", "--out", "/sys/fs/masks.png"], tmp_path, timeout=120)
    line = one_error_line(result)
    assert re.match(r"error: /sys/fs/?: (permission denied|read-only file system); write elsewhere: choose another --out", line), line


def test_analyze_boundary_turns_a_full_disk_into_one_line(capsys):
    def main() -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/out/results.md")

    assert exit_on_user_error(main) == 2
    assert capsys.readouterr().err == "error: /out/results.md: no space left on the device; free space or write elsewhere: choose another --out\n"


# ------------------------------------------------------------------------------------------ the run folder
def _hydra_folder(tmp_path: Path, log_text: str = "") -> tuple[Path, Path]:
    """A run folder as Hydra leaves it before our code runs: the .hydra snapshot and the (empty) log."""
    compose_train(tmp_path, ["logger=none"])
    folder = Path(HydraConfig.get().runtime.output_dir)
    (folder / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (folder / ".hydra" / name).write_text("{}\n")
    log = folder / f"{HydraConfig.get().job.name}.log"
    log.write_text(log_text)
    return folder, log


def _fail(cfg) -> None:
    raise GMError("data.fasta=nope.fa: FASTA file not found")


def test_failed_run_removes_the_folder_it_just_made(tmp_path, capsys):
    folder, _ = _hydra_folder(tmp_path)

    def fail_after_choosing_a_wandb_id(cfg) -> None:  # as train.py does before it builds the trainer
        (folder / "wandb").mkdir()
        (folder / "wandb" / "run_id").write_text("ab12cd34\n")
        _fail(cfg)

    with pytest.raises(SystemExit) as exit_:
        run_entry(fail_after_choosing_a_wandb_id, compose_train(tmp_path, ["logger=none"]))
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: data.fasta=nope.fa: FASTA file not found\n"
    assert not folder.exists()


@pytest.mark.parametrize("what", ["checkpoint", "earlier_log", "written_by_the_run", "own_file_in_hydra", "wandb_run"])
def test_failed_run_keeps_a_folder_with_anything_else(tmp_path, what):
    """Resuming into an existing folder, or a run that failed after writing something: nothing is deleted."""
    folder, log = _hydra_folder(tmp_path, log_text="[earlier run] step 100\n" if what == "earlier_log" else "")
    if what == "checkpoint":
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    if what == "own_file_in_hydra":
        (folder / ".hydra" / "notes.txt").write_text("mine")
    if what == "wandb_run":  # an earlier run's W&B data next to its id
        (folder / "wandb" / "offline-run-1").mkdir(parents=True)
        (folder / "wandb" / "run_id").write_text("ab12cd34\n")

    def fail_after_writing(cfg) -> None:
        if what == "written_by_the_run":
            (folder / "csv").mkdir()
            (folder / "csv" / "metrics.csv").write_text("step,train/loss\n0,8.3\n")
        _fail(cfg)

    with pytest.raises(SystemExit):
        run_entry(fail_after_writing, compose_train(tmp_path, ["logger=none"]))
    assert folder.is_dir() and log.is_file() and (folder / ".hydra" / "config.yaml").is_file()


def test_a_bug_keeps_its_traceback_and_still_cleans_up(tmp_path):
    folder, _ = _hydra_folder(tmp_path)

    def bug(cfg) -> None:
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run_entry(bug, compose_train(tmp_path, ["logger=none"]))
    assert not folder.exists()


# ------------------------------------------------------------------------------------------ quiet output
NOISE = [
    "anonymous setting has no effect",  # wandb, from Lightning's WandbLogger
    "LeafSpec",  # torch's _pytree deprecation, once per rank
    "litlogger",  # Lightning's tip
    "Writing model shards",  # transformers' save_pretrained bar
    "Total FLOPs",  # Lightning's model summary, always 0
    "v_num",  # the logger's run id in the progress bar
    "Validation DataLoader",  # a second bar
    "Run history",  # wandb's 30-line summary table
]


def test_a_short_run_prints_what_a_user_needs_and_no_noise(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_SILENT", raising=False)  # as a user runs it
    args = [a for a in TINY if not a.startswith(("callbacks.progress_bar", "export_hf"))] + ["export_hf=true"]
    result = run_cli("train.py", args, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    assert [noise for noise in NOISE if noise in output] == [], output[-6000:]
    (folder,) = run_folders(tmp_path)
    assert output.count(f"run folder: {folder}") == 1
    assert output.count("final metrics: ") == 1 and "model: BERT 2 layers x 32 hidden" in output
    assert "step (epoch 0)" in output and (folder / "hf" / "config.json").is_file()


@pytest.mark.slow
def test_ddp_prints_final_metrics_once(tmp_path):
    args = TINY + ["trainer.devices=2", "trainer.accelerator=cpu", "logger=csv"]
    result = run_cli("train.py", args, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    assert output.count("final metrics (train/*: rank 0's batches): ") == 1
    assert "LeafSpec" not in output and output.count("run folder: ") == 1
    assert "It is recommended to use `self.log(" not in output  # val/* are synced by torchmetrics already
