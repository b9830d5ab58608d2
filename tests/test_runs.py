"""Run folders, resuming and files on disk: one folder per run, resume checks, file modes, leftovers."""

from __future__ import annotations

import csv
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, TINY, compose_train, run_cli
from gm.config import launch_id, matching_run
from gm.train import read_checkpoint, train
from gm.utils import GMError, atomic_directory, atomic_write_text, remove_stale_temporaries

#: hydra.run.dir as conf/hydra/default.yaml sets it, with the clock frozen: runs "start in the same second"
FROZEN_RUN_DIR = (
    "hydra.run.dir='${gm.launch_id:${paths.log_dir}/${task_name}/runs,2026-01-01_00-00-00,"
    "${oc.select:ckpt_path,null},${hydra.overrides.task},${hydra.mode}}'"
)
QUICK = TINY + ["trainer.max_steps=3", "trainer.val_check_interval=3", "logger=csv"]


def same_wandb_run(folder: Path, wandb_id: str) -> bool:
    """An offline W&B folder of run ``wandb_id``; W&B adds ``-1`` to a second start within the same second."""
    return re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{wandb_id}(-\d+)?", folder.name) is not None


def steps_logged(run: Path) -> list[int]:
    with open(run / "csv" / "metrics.csv") as handle:
        return sorted(int(r["step"]) for r in csv.DictReader(handle) if r.get("train/loss"))


def spawn(code: str, *args: str) -> subprocess.Popen:
    """A Python process running ``code`` with the repository importable; it prints ``ready`` when set."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, text=True)


# ------------------------------------------------------------------------------------------ run folders
LAUNCH = """
import sys, time
from gm.config import launch_id
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # all start at the same instant
sweep = sys.argv[2].endswith("MULTIRUN")  # a sweep folder's call passes no overrides (conf/hydra/default.yaml)
print(launch_id(sys.argv[1], "2026-01-01_00-00-00", None, None if sweep else [], sys.argv[2]), flush=True)
"""


@pytest.mark.parametrize("mode", ["RunMode.RUN", "RunMode.MULTIRUN"], ids=["run", "sweep"])
def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, mode):
    start = str(time.time() + 1.5)
    procs = [spawn(LAUNCH, str(tmp_path / "runs"), mode, start) for _ in range(4)]
    folders = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(folders)) == 4, folders
    assert sorted(Path(f).name for f in folders) == ["2026-01-01_00-00-00", *(f"2026-01-01_00-00-00-{n}" for n in (2, 3, 4))]
    assert all(Path(f).is_dir() for f in folders)


def test_a_single_run_only_names_the_sweep_folder(tmp_path):
    """The W&B group reads hydra.sweep.dir in a single run: that must not make a multirun folder."""
    assert launch_id(str(tmp_path / "multiruns"), "t", None, None, "RunMode.RUN") == str(tmp_path / "multiruns" / "t")
    assert not (tmp_path / "multiruns").exists()


def test_two_train_commands_in_the_same_second_write_separate_runs(tmp_path):
    """Two real train.py runs given the same timestamp: two folders, each with its own CSV and checkpoints."""
    env = dict(os.environ, GM_CACHE_DIR=str(tmp_path / "cache"), GM_LOG_DIR=str(tmp_path / "logs"), PYTHONUNBUFFERED="1")
    procs = [
        subprocess.Popen([sys.executable, str(ROOT / "train.py"), *QUICK, f"seed={seed}", FROZEN_RUN_DIR],
                         cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for seed in (0, 1)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-3000:]
    runs = sorted((tmp_path / "logs" / "pretrain" / "runs").iterdir())
    assert [r.name for r in runs] == ["2026-01-01_00-00-00", "2026-01-01_00-00-00-2"]
    assert sorted(OmegaConf.load(r / ".hydra" / "config.yaml").seed for r in runs) == [0, 1]
    for run in runs:
        assert steps_logged(run) == [0, 1, 2]  # not both runs' rows interleaved
        assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.ckpt", "step_0000003.ckpt"}  # no last-v1.ckpt


@pytest.mark.slow
def test_lightning_ddp_ranks_share_their_parents_folder(tmp_path):
    """Lightning re-runs train.py for rank 1 with the parent's hydra.run.dir: one folder for the run,
    while a run started in the same second still gets its own."""
    env = dict(os.environ, GM_CACHE_DIR=str(tmp_path / "cache"), GM_LOG_DIR=str(tmp_path / "logs"), PYTHONUNBUFFERED="1")
    ddp = ["trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    procs = [
        subprocess.Popen([sys.executable, str(ROOT / "train.py"), *QUICK, *extra, FROZEN_RUN_DIR],
                         cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for extra in (ddp, [])
    ]
    for p in procs:
        assert p.wait(timeout=400) == 0, p.stderr.read()[-3000:]
    runs = sorted((tmp_path / "logs" / "pretrain" / "runs").iterdir())
    assert len(runs) == 2, [r.name for r in runs]
    devices = {int(OmegaConf.load(r / ".hydra" / "config.yaml").trainer.devices): r for r in runs}
    assert torch.load(devices[2] / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert torch.load(devices[1] / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3


def test_ckpt_path_auto_picks_the_newest_run_of_the_same_command(tmp_path):
    def run(name: str, overrides: list[str], checkpoint: bool = True) -> Path:
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        if checkpoint:
            (folder / "checkpoints").mkdir()
            (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
            time.sleep(0.01)
        return folder

    run("a", ["masking=bert", "ckpt_path=auto"])
    newer = run("b", ["masking=bert", "trainer.max_steps=100"])
    run("c", ["masking=genemask"])
    run("d", ["masking=bert"], checkpoint=False)
    # ckpt_path, max_steps and device counts do not make another run; masking does
    assert matching_run(tmp_path, ["masking=bert", "ckpt_path=auto", "trainer.max_steps=800"]) == newer
    assert matching_run(tmp_path, ["masking=kmer_span", "ckpt_path=auto"]) is None
    assert launch_id(str(tmp_path), "t", "auto", ["masking=bert", "ckpt_path=auto"], "RunMode.RUN") == str(newer)
    assert launch_id(str(tmp_path), "t", "auto", ["masking=kmer_span", "ckpt_path=auto"], "RunMode.RUN") == str(tmp_path / "t")


# ------------------------------------------------------------------------------------------ resume
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 3-step tiny run (CSV only), trained once for the tests below."""
    cfg = compose_train(tmp_path_factory.mktemp("finished"), TINY + ["trainer.max_steps=3", "trainer.val_check_interval=3", "logger=csv"])
    train(cfg)
    return Path(cfg.paths.output_dir)


def test_a_checkpoint_resumes_in_its_own_run_folder(tmp_path):
    run = tmp_path / "runs" / "2026-01-01_00-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    for name in ("last.ckpt", "step_0000003.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"x")
        assert launch_id(str(tmp_path / "runs"), "now", str(run / "checkpoints" / name), [], "RunMode.RUN") == str(run)
    loose = tmp_path / "elsewhere.ckpt"  # not in a run folder: a new run
    loose.write_bytes(b"x")
    assert launch_id(str(tmp_path / "runs"), "now", str(loose), [], "RunMode.RUN") == str(tmp_path / "runs" / "now")


def test_resume_keeps_the_wandb_run_and_a_finished_run_says_so(tmp_path, caplog):
    cfg = compose_train(tmp_path, TINY + ["trainer.max_steps=2", "trainer.val_check_interval=2"])  # W&B offline
    train(cfg)
    run = Path(cfg.paths.output_dir)
    wandb_id = (run / "wandb" / "run_id").read_text().strip()
    cfg = compose_train(tmp_path, TINY + ["trainer.max_steps=3", "trainer.val_check_interval=2", "ckpt_path=auto"])
    train(cfg)
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(same_wandb_run(p, wandb_id) for p in offline)
    assert steps_logged(run) == [0, 1, 2]
    caplog.clear()
    caplog.set_level(logging.INFO, logger="gm")
    assert train(cfg) == {}  # the same command again: finished
    said = caplog.text
    assert "this run already finished at step 3 (trainer.max_steps=3)" in said and "larger trainer.max_steps" in said
    assert "final metrics" not in said
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2 and steps_logged(run) == [0, 1, 2]


@pytest.mark.slow
def test_resume_continues_the_checkpoints_run_folder_csv_and_wandb_run(tmp_path):
    """Through the command line: ``ckpt_path=<run>/checkpoints/last.ckpt`` continues in <run> (no new
    folder, one CSV, the same W&B id), another masking is refused, and ``ckpt_path=auto`` finds the run."""
    base = tmp_path
    first = run_cli("train.py", [*TINY, "trainer.max_steps=3", "trainer.val_check_interval=3"], base)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = base / "logs" / "pretrain" / "runs"
    (run,) = runs.iterdir()
    last = run / "checkpoints" / "last.ckpt"
    wandb_id = (run / "wandb" / "run_id").read_text().strip()
    result = run_cli("train.py", [*TINY, "trainer.max_steps=5", "trainer.val_check_interval=3", f"ckpt_path={last}"], base)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in runs.iterdir()] == [run.name]
    assert steps_logged(run) == [0, 1, 2, 3, 4]
    assert torch.load(last, weights_only=False)["global_step"] == 5
    assert (run / "wandb" / "run_id").read_text().strip() == wandb_id
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(same_wandb_run(p, wandb_id) for p in offline)
    output = result.stdout + result.stderr
    # the longer run rebuilds the learning-rate schedule: said in one warning line
    assert "trainer.max_steps changed from 3 to 5: the learning-rate schedule is rebuilt" in output
    # the config the run started with stays; the resumption's is kept beside it
    assert "trainer.max_steps=3" in (run / ".hydra" / "overrides.yaml").read_text()
    (resumed,) = (run / ".hydra").glob("resumed-*")
    assert OmegaConf.load(resumed / "config.yaml").trainer.max_steps == 5

    # another masking is refused in one line, and leaves the run as it was
    refused = run_cli("train.py", [*TINY, "trainer.max_steps=6", "masking=genemask", f"ckpt_path={last}"], base)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"error: cannot resume {last}: masking differs (checkpoint: kmer_span, now: genemask); pass resume_override=true" in refused.stderr
    assert torch.load(last, weights_only=False)["global_step"] == 5 and steps_logged(run) == [0, 1, 2, 3, 4]

    # the same command with ckpt_path=auto, from anywhere: the run is found, finished, and says so
    again = run_cli("train.py", [*TINY, "trainer.max_steps=5", "trainer.val_check_interval=3", "ckpt_path=auto"], base)
    assert again.returncode == 0, again.stderr[-3000:]
    said = again.stdout + again.stderr
    assert "this run already finished at step 5 (trainer.max_steps=5)" in said and "larger trainer.max_steps" in said
    assert "final metrics" not in said and "Traceback" not in said
    assert [p.name for p in runs.iterdir()] == [run.name]
    assert steps_logged(run) == [0, 1, 2, 3, 4]


def _resume(tmp_path: Path, ckpt: Path, extra: list[str]) -> dict:
    cfg = compose_train(tmp_path, TINY + ["trainer.max_steps=4", "logger=csv", f"ckpt_path={ckpt}", *extra])
    return train(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["masking=genemask"], "masking differs (checkpoint: kmer_span, now: genemask)"),
        (["masking.p_center=0.05"], "masking differs (masking.p_center: checkpoint 0.025, now 0.05)"),
        (["model.hidden_size=48"], "model differs (model.hidden_size: checkpoint 32, now 48)"),
        (["k=5"], "k differs (checkpoint: 6, now: 5)"),
    ],
    ids=["masking", "masking-setting", "model", "k"],
)
def test_resume_refuses_another_masking_or_model(finished_run, tmp_path, overrides, message):
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    with pytest.raises(GMError) as err:
        _resume(tmp_path, ckpt, overrides)
    assert str(err.value) == f"cannot resume {ckpt}: {message}; pass resume_override=true to allow it"


def test_resume_refuses_another_genome(finished_run, tmp_path, small_fasta):
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    with pytest.raises(GMError, match=r"cannot resume .*: data differs \(checkpoint: .*hg38_chr2.*, now: .*small\.fa\)"):
        _resume(tmp_path, ckpt, [f"data.fasta={small_fasta}"])


def test_resume_override_allows_a_difference_and_a_model_that_cannot_fit_is_one_line(finished_run, tmp_path):
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    _resume(tmp_path / "a", ckpt, ["masking.p_center=0.05", "resume_override=true"])  # trains on, with a warning
    assert torch.load(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    with pytest.raises(GMError, match=r"^cannot resume .*: its weights do not fit model=tiny \(\d+ tensors differ in size, e.g. size mismatch"):
        _resume(tmp_path / "b", ckpt, ["model.hidden_size=48", "resume_override=true"])


def test_unusable_checkpoint_files_are_one_line(finished_run, tmp_path):
    real = (finished_run / "checkpoints" / "last.ckpt").read_bytes()
    files = {"empty.ckpt": b"", "truncated.ckpt": real[: len(real) // 2], "random.ckpt": os.urandom(4096)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(GMError, match=rf"^ckpt_path=.*{name}: not a readable checkpoint"):
            read_checkpoint(str(tmp_path / name))
    with pytest.raises(GMError, match=r"missing\.ckpt: no such file"):
        _resume(tmp_path, tmp_path / "missing.ckpt", [])
    result = run_cli("train.py", [*TINY, "logger=csv", f"ckpt_path={tmp_path / 'truncated.ckpt'}"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        next(line for line in result.stderr.splitlines() if "truncated.ckpt: not a readable checkpoint" in line)
    ]


# ------------------------------------------------------------------------------------------ files
@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "results.json", "{}")
        with atomic_directory(tmp_path / "cache") as tmp:
            (tmp / "meta.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "cache").stat().st_mode & 0o777 == dir_mode


WRITER = """
import sys, time
from pathlib import Path
from gm.utils import atomic_directory, atomic_open
with atomic_open(Path(sys.argv[1]) / "last.ckpt") as handle, atomic_directory(Path(sys.argv[1]) / "genome") as tmp:
    handle.write(b"half a checkpoint"); handle.flush()
    (tmp / "bases.2bit").write_bytes(b"half a genome")
    print("ready", flush=True)
    time.sleep(120)
"""


def test_a_killed_writers_temporaries_are_removed_and_a_live_writers_kept(tmp_path):
    (tmp_path / "last.ckpt").write_text("the previous checkpoint")
    (tmp_path / ".notes.tmp").write_text("not ours")
    killed, live = spawn(WRITER, str(tmp_path)), spawn(WRITER, str(tmp_path))
    try:
        assert killed.stdout.readline().strip() == "ready" and live.stdout.readline().strip() == "ready"
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        names = lambda pid: {p.name for p in tmp_path.iterdir() if f"~{pid}~" in p.name}  # noqa: E731
        dead = names(killed.pid)
        assert len(dead) == 2 and len(names(live.pid)) == 2  # a file and a folder each
        assert {p.name for p in remove_stale_temporaries(tmp_path)} == dead
        assert not names(killed.pid)
        assert len(names(live.pid)) == 2  # still being written: kept
        assert (tmp_path / "last.ckpt").read_text() == "the previous checkpoint" and (tmp_path / ".notes.tmp").exists()
    finally:
        live.kill()
        live.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see a zombie")
def test_a_killed_writer_not_yet_reaped_counts_as_dead(tmp_path):
    """A writer killed but not yet reaped by its parent (a zombie) is dead: its temporaries go.

    Another process waiting for it (a rank waiting for the genome cache's builder) would otherwise
    keep a half-built ~1 GB folder until the parent (torchrun, srun) gets round to reaping it.
    """
    killed = spawn(WRITER, str(tmp_path))
    try:
        assert killed.stdout.readline().strip() == "ready"
        os.kill(killed.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{killed.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z":  # not reaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert len(remove_stale_temporaries(tmp_path)) == 2
        assert not [p for p in tmp_path.iterdir() if f"~{killed.pid}~" in p.name]
    finally:
        killed.wait(timeout=30)


def test_training_removes_a_killed_runs_temporaries(tmp_path):
    cfg = compose_train(tmp_path, TINY + ["trainer.max_steps=1", "logger=csv"])
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    killed = spawn(WRITER, str(checkpoints))
    assert killed.stdout.readline().strip() == "ready"
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert len(list(checkpoints.glob(f".*~{killed.pid}~*"))) == 2
    train(cfg)
    assert not list(checkpoints.glob(f".*~{killed.pid}~*"))
