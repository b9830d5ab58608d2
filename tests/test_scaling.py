"""Scale-out: the global batch size fixed across device counts, and the same first optimiser step
whether one process accumulates or several processes share the batch, launched by Lightning,
by torchrun, or by srun (SLURM, two "nodes" simulated on this machine)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, TINY, compose_train, random_genome, write_fasta
from gm.config import accumulation, device_count, launch_id
from gm.utils import GMError

GLOBAL_BATCH = 16  # windows per optimiser step
BATCH = 8  # per process


# ------------------------------------------------------------------------------------------ resolvers
@pytest.mark.parametrize(
    ("devices", "accelerator", "count"),
    [(1, "cpu", 1), (4, "gpu", 4), ("2", "gpu", 2), ([0, 1, 2], "gpu", 3), ("0,1", "gpu", 2), ("auto", "cpu", 1), (-1, "cpu", 1)],
)
def test_device_count_reads_every_form_of_trainer_devices(devices, accelerator, count):
    assert device_count(devices, accelerator) == count


def test_accumulation_keeps_the_global_batch():
    assert accumulation(None, 10, 4, 2) == 1  # no target: no accumulation
    assert accumulation(250, 10, 1, 1, "gpu") == 25
    assert accumulation(250, 10, 5, 1, "gpu") == 5
    assert accumulation(256, 8, 4, 2, "gpu") == 4
    assert accumulation(64, 8, 4, 2, "gpu") == 1
    with pytest.raises(GMError, match=r"global_batch_size=250 is not a multiple of data.batch_size=10 x 4 devices x 1 nodes = 40"):
        accumulation(250, 10, 4, 1, "gpu")
    with pytest.raises(GMError, match="not a multiple"):
        accumulation(8, 10, 1, 1)  # smaller than one step's batch
    with pytest.raises(GMError, match="trainer.devices"):
        device_count("two")


def test_global_batch_size_sets_accumulation_in_the_composed_config(tmp_path):
    for devices, nodes, want in ((1, 1, 4), (2, 1, 2), (2, 2, 1)):
        cfg = compose_train(
            tmp_path,
            [f"global_batch_size={4 * 2 * 2 * 10 // 4}", "data.batch_size=10", "trainer=ddp",
             f"trainer.devices={devices}", f"trainer.num_nodes={nodes}"],
        )
        assert cfg.trainer.accumulate_grad_batches == want
    assert compose_train(tmp_path).trainer.accumulate_grad_batches == 1  # default: no global target
    explicit = compose_train(tmp_path, ["global_batch_size=40", "trainer.accumulate_grad_batches=3"])
    assert explicit.trainer.accumulate_grad_batches == 3  # a number given outright wins
    paper = compose_train(tmp_path, ["experiment=genemask_dnabert", "trainer.devices=5"])
    assert (paper.trainer.accumulate_grad_batches, paper.trainer.val_check_interval) == (5, 2500)
    bad = compose_train(tmp_path, ["experiment=genemask_dnabert", "trainer.devices=4"])
    with pytest.raises(Exception, match="not a multiple"):
        OmegaConf.to_container(bad.trainer, resolve=True)
    assert compose_train(tmp_path, config_name="finetune").trainer.accumulate_grad_batches == 1


def test_launch_id_is_shared_by_every_rank_of_a_launch(monkeypatch, tmp_path):
    for name in ("SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_STEP_ID", "TORCHELASTIC_RUN_ID", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    # each call uses its own timestamp: the answer is remembered per (folder, timestamp, ...) for the process
    assert launch_id(str(tmp_path), "2026-01-01_00-00-00", None, []) == str(tmp_path / "2026-01-01_00-00-00")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert launch_id(str(tmp_path), "t1", None, []) == str(tmp_path / "t1")  # one task: a folder of its own
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_STEP_ID", "3")
    assert launch_id(str(tmp_path), "t2", None, []) == str(tmp_path / "slurm-77.3")
    assert launch_id(str(tmp_path), "t3", None, []) == str(tmp_path / "slurm-77.3")  # a rank composing later
    for name in ("SLURM_NTASKS", "SLURM_JOB_ID"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch_id(str(tmp_path), "t4", None, []) == str(tmp_path / "torchrun-abc")


# ------------------------------------------------------------------------------------------ launches
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scaling")
    write_fasta(root / "genome.fa", random_genome(lengths=(9000, 8000, 9000)))
    return root


def train_args(workspace: Path, name: str, extra: list[str]) -> list[str]:
    return TINY + [
        f"data.fasta={workspace / 'genome.fa'}",
        f"data.batch_size={BATCH}",
        f"global_batch_size={GLOBAL_BATCH}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=100",
        "trainer.accelerator=cpu",
        "logger=csv",
        f"+callbacks.probe._target_=ddp_helpers.RecordSteps",
        f"+callbacks.probe.out_dir={workspace / name / 'probe'}",
        *extra,
    ]


def launch(workspace: Path, name: str, extra: list[str], *, launcher: str = "python", processes: int = 1) -> Path:
    """Run train.py as a user would with ``launcher``; returns the folder of the probe's records."""
    env = dict(
        os.environ,
        GM_CACHE_DIR=str(workspace / "cache"),
        GM_LOG_DIR=str(workspace / name / "logs"),
        PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    args = train_args(workspace, name, extra)
    script = str(ROOT / "train.py")
    if launcher == "torchrun":
        commands = [[sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", script, *args]]
        envs = [env]
    elif launcher == "srun":  # what srun sets for each task of `sbatch --nodes=2 --ntasks-per-node=1`
        port = str(free_port())
        commands = [[sys.executable, script, *args]] * processes
        envs = [
            dict(env, SLURM_JOB_ID="4242", SLURM_STEP_ID="0", SLURM_JOB_NAME="genemask", SLURM_NTASKS=str(processes),
                 SLURM_NTASKS_PER_NODE="1", SLURM_NNODES=str(processes), SLURM_NODELIST="localhost",
                 SLURM_PROCID=str(rank), SLURM_LOCALID="0", SLURM_NODEID=str(rank), MASTER_PORT=port)
            for rank in range(processes)
        ]
    else:
        commands, envs = [[sys.executable, script, *args]], [env]
    procs = [
        subprocess.Popen(c, cwd=workspace, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c, e in zip(commands, envs)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
    return workspace / name / "probe"


def read_probe(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("rank*.json"))]


@pytest.fixture(scope="module")
def one_process(workspace) -> list[dict]:
    return read_probe(launch(workspace, "one", ["trainer.devices=1"]))


@pytest.mark.parametrize(
    ("launcher", "extra"),
    [
        ("python", ["trainer.devices=2", "trainer.strategy=ddp"]),  # Lightning starts the second process
        ("torchrun", ["trainer.devices=2", "trainer.strategy=ddp"]),
        ("srun", ["trainer.devices=1", "trainer.num_nodes=2", "trainer.strategy=ddp"]),  # 2 nodes x 1 device
    ],
)
def test_same_global_batch_gives_the_same_first_step_on_one_or_two_processes(workspace, one_process, launcher, extra):
    """1 process x 2 accumulated batches and 2 processes x 1 batch (CPU, gloo): the same windows,
    masks and dropout, so the same losses and the same gradient at the first optimiser step."""
    two = read_probe(launch(workspace, launcher, extra, launcher=launcher, processes=2))
    (one,) = one_process
    assert one["accumulate"] == 2 and one["world_size"] == 1
    assert [r["world_size"] for r in two] == [2, 2] and [r["accumulate"] for r in two] == [1, 1]
    environment = {"python": "LightningEnvironment", "torchrun": "TorchElasticEnvironment", "srun": "SLURMEnvironment"}
    assert {r["environment"] for r in two} == {environment[launcher]}
    if launcher == "srun":
        assert [r["node_rank"] for r in two] == [0, 1]

    def first_step(records: list[dict]) -> dict[tuple, float]:
        return {tuple(b["key"]): b["loss"] for r in records for b in r["batches"] if b["step"] == 0}

    single, shared = first_step([one]), first_step(two)
    assert sorted(single) == sorted(shared) == [(0, 0), (0, 1)]  # global batches 0 and 1 of epoch 0
    for key in single:
        assert shared[key] == pytest.approx(single[key], rel=1e-5)
    first_loss = sum(single.values()) / 2
    assert sum(shared.values()) / 2 == pytest.approx(first_loss, rel=1e-5)
    assert two[0]["grad_norms"][0] == two[1]["grad_norms"][0]  # DDP: every rank holds the all-reduced gradient
    assert two[0]["grad_norms"][0] == pytest.approx(one["grad_norms"][0], rel=1e-4)
    # all ranks of one launch share one run folder
    runs = list((workspace / launcher / "logs" / "pretrain" / "runs").iterdir())
    assert len(runs) == 1, runs
