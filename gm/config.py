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


def by_shots(shots: int, few: Any, many: Any) -> Any:
    """The paper's fine-tuning settings by regime: ``few`` for 10-100 shots, ``many`` for 500 and up."""
    return few if int(shots) <= 100 else many


def join_nonempty(*parts: Any) -> str:
    return "-".join(str(p) for p in parts if p not in (None, ""))


def register_resolvers() -> None:
    resolvers: dict[str, Callable[..., Any]] = {
        "gm.root": lambda: str(PROJECT_ROOT),
        "gm.wandb_offline": wandb_offline,
        "gm.run_group": run_group,
        "gm.join": join_nonempty,
        "gm.by_shots": by_shots,
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
