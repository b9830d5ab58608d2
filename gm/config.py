"""Hydra/OmegaConf glue shared by the entry points: resolvers and the error boundary."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from gm.utils import GMError

log = logging.getLogger("gm")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def wandb_offline() -> bool:
    """W&B goes online only when an account is configured, so a run never blocks on a login prompt."""
    if os.environ.get("WANDB_MODE") in {"offline", "disabled", "dryrun"}:
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" not in netrc.read_text()
    except OSError:
        return True


def run_group(mode: Any, sweep_dir: str, task_name: str) -> str:
    """W&B group: the sweep's folder name for a multirun (its jobs side by side), else the task."""
    return f"{task_name}-{Path(sweep_dir).name}" if "MULTIRUN" in str(mode) else task_name


def launch_id(timestamp: str) -> str:
    """The run folder's name: ``timestamp``, unless srun or torchrun started several processes.

    Those start every rank as its own ``python train.py``, and ranks composing a moment apart
    would each make a folder of their own; the launch's id (SLURM job and step, or torchrun's
    rendezvous id) is the same for all of them.
    """
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        return f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"
    run = env.get("TORCHELASTIC_RUN_ID", "none")
    if run != "none" and int(env.get("WORLD_SIZE", "1")) > 1:
        return f"torchrun-{run}"
    return timestamp


def by_shots(shots: int, few: Any, many: Any) -> Any:
    """The paper's fine-tuning settings by regime: ``few`` for 10-100 shots, ``many`` for 500 and up."""
    return few if int(shots) <= 100 else many


def device_count(devices: Any, accelerator: Any = "auto") -> int:
    """How many devices per node a ``trainer.devices`` value means (int, "auto", -1, "0,1", [0, 1])."""
    if not isinstance(devices, str) and hasattr(devices, "__len__"):  # a list of ids (also OmegaConf's ListConfig)
        return len(devices)
    text = str(devices).strip()
    if text in {"auto", "-1"}:
        if str(accelerator) in {"gpu", "cuda", "auto"}:
            import torch

            return max(1, torch.cuda.device_count())
        return 1
    if "," in text:
        return len([part for part in text.split(",") if part.strip()])
    try:
        count = int(text)
    except ValueError:
        raise GMError(f"trainer.devices={devices!r} is not a device count, a list of device ids, or 'auto'") from None
    if count < 1:
        raise GMError(f"trainer.devices must be at least 1 (or -1/'auto'), got {devices!r}")
    return count


def accumulation(global_batch_size: Any, batch_size: Any, devices: Any, num_nodes: Any, accelerator: Any = "auto") -> int:
    """Gradient-accumulation steps that keep ``global_batch_size`` fixed for any number of devices.

    global batch = batch per device x devices x nodes x accumulation. ``global_batch_size`` null
    means no target: accumulate nothing (1).
    """
    if global_batch_size in (None, "None", "null"):
        return 1
    per_step = int(batch_size) * device_count(devices, accelerator) * int(num_nodes)
    steps, remainder = divmod(int(global_batch_size), per_step)
    if remainder or steps < 1:
        raise GMError(
            f"global_batch_size={global_batch_size} is not a multiple of data.batch_size={batch_size} x "
            f"{device_count(devices, accelerator)} devices x {num_nodes} nodes = {per_step}; "
            "change global_batch_size or data.batch_size"
        )
    return steps


def join_nonempty(*parts: Any) -> str:
    return "-".join(str(p) for p in parts if p not in (None, ""))


def register_resolvers() -> None:
    resolvers: dict[str, Callable[..., Any]] = {
        "gm.root": lambda: str(PROJECT_ROOT),
        "gm.wandb_offline": wandb_offline,
        "gm.run_group": run_group,
        "gm.join": join_nonempty,
        "gm.by_shots": by_shots,
        "gm.accumulation": accumulation,
        "gm.launch_id": launch_id,
        "gm.times": lambda a, b: a * b,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def run_entry(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point, turning user errors into one clear line and a non-zero exit."""
    try:
        return fn(cfg)
    except GMError as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, GMError):
            cause = cause.__cause__
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)


register_resolvers()
