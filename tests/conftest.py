"""Shared fixtures: compose the real Hydra configs with tiny sizes, and small genomes."""

from __future__ import annotations

import errno
import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import gm.config  # noqa: F401  (registers the ${gm.*} resolvers)

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
SAMPLE_FASTA = ROOT / "data" / "genome" / "hg38_chr2_1-2333275.fa.gz"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_CODE", "true")

#: overrides that make any pretraining run take seconds on a CPU
TINY = [
    "model=tiny",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_attention_heads=2",
    "model.max_position_embeddings=66",
    "data.max_kmers=64",
    "data.batch_size=8",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "callbacks.model_checkpoint.every_n_train_steps=3",
    "callbacks.progress_bar.refresh_rate=0",
    "export_hf=false",
]


class FullDiskFile:
    """Wraps a file handle whose writes fail as on a full disk: OSError 28, naming no file."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def __enter__(self) -> "FullDiskFile":
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()

    def write(self, data) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def write_fasta(path: Path, records: dict[str, str], width: int = 60) -> Path:
    text = "".join(
        f">{name}\n" + "".join(seq[i : i + width] + "\n" for i in range(0, len(seq), width)) for name, seq in records.items()
    )
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


def random_genome(seed: int = 0, lengths: tuple[int, ...] = (6000, 5000, 7000)) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    return {f"chr{i + 1}": "".join(rng.choice(list("ACGT"), n)) for i, n in enumerate(lengths)}


@pytest.fixture
def small_fasta(tmp_path: Path) -> Path:
    """Three random records, 18 kb: a genome whose training epoch is ~20 batches of 8."""
    return write_fasta(tmp_path / "small.fa", random_genome())


def compose_train(tmp_path: Path, overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """The real ``conf/train.yaml`` with overrides, its outputs under ``tmp_path``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.cache_dir = str(tmp_path / "cache")
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


def run_cli(script: str, args: list[str], tmp_path: Path, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """Run an entry point as a user would, with caches and logs under ``tmp_path``."""
    env = dict(os.environ, GM_CACHE_DIR=str(tmp_path / "cache"), GM_LOG_DIR=str(tmp_path / "logs"), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout, **popen
    )
