"""Hydra/OmegaConf glue shared by the entry points: resolvers and the error boundary."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from gm.utils import GMError

log = logging.getLogger("gm")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


#: the modules of the flat layout (before ``gm/`` had sub-packages) and the modules their classes live in
#: now: configs, run folders and checkpoints written then name ``_target_``s such as ``gm.masking.GeneMaskMasking``
MOVED_MODULES = {
    "gm.tokenizer": "gm.data.tokenizer",
    "gm.fasta": "gm.data.fasta",
    "gm.genome": "gm.data.genome",
    "gm.fewshot": "gm.data.fewshot",
    "gm.masking": "gm.masking.strategies",
    "gm.masking_options": "gm.masking.options",
    "gm.npmi": "gm.masking.npmi",
    "gm.mlm": "gm.models.mlm",
    "gm.classifier": "gm.models.classifier",
    "gm.pretrained": "gm.models.pretrained",
    "gm.flops": "gm.models.flops",
    "gm.results": "gm.analysis.results",
    "gm.motifs": "gm.analysis.motifs",
    "gm.enrichment": "gm.analysis.enrichment",
    "gm.curves": "gm.analysis.curves",
    "gm.plots": "gm.analysis.plots",
    "gm.analyze": "gm.analysis.cli",
    "gm.comparison": "gm.experiments.comparison",
}


def current_target(target: Any) -> Any:
    """``target`` (a ``_target_``) with a module of the flat layout replaced by its module now; else unchanged."""
    if not isinstance(target, str):
        return target
    module, _, name = target.rpartition(".")
    return f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else target


def current_targets(value: Any) -> Any:
    """Config data (dicts and lists) with every ``_target_`` named as :func:`current_target` names it."""
    if isinstance(value, dict):
        return {key: current_target(item) if key == "_target_" else current_targets(item) for key, item in value.items()}
    if isinstance(value, list):
        return [current_targets(item) for item in value]
    return value


def upgrade_targets(cfg: DictConfig) -> None:
    """Rename, in place, every ``_target_`` of a composed config that names a module of the flat layout.

    A config group written for the flat layout (``_target_: gm.masking.GeneMaskMasking``) then
    builds the same class, and the run records the current name.
    """
    for key in list(cfg.keys()):
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            upgrade_targets(node)
        elif key == "_target_" and not OmegaConf.is_interpolation(cfg, str(key)):
            target = cfg[key]
            if current_target(target) != target:
                cfg[key] = current_target(target)


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


_LAUNCHES: dict[tuple, str] = {}


def launch_id(parent: str, timestamp: str, ckpt_path: Any = None, overrides: Any = None, mode: Any = "RUN") -> str:
    """A run's (or sweep's) folder under ``parent``: one of its own, unless it belongs with others.

    - resuming (``ckpt_path``): a checkpoint in ``<run>/checkpoints/`` continues in ``<run>``;
      ``auto`` continues the newest run here that was started with the same overrides
      (see :func:`matching_run`), if any;
    - srun or torchrun ranks (each its own ``python train.py``, composing moments apart) share
      the launch's folder, named by its id (SLURM job and step, or torchrun's rendezvous id);
    - otherwise ``<timestamp>``, or ``<timestamp>-2``, ``-3``... when another run started in the
      same second: the folder is made here with a ``mkdir`` that fails if it exists, so no two
      runs ever share one. A sweep's folder (``mode`` MULTIRUN) likewise; in a single run its
      name (read for the W&B group) is only named, not made.

    The answer is remembered for the process: Hydra resolves the folder again (Lightning passes
    it to the DDP ranks it spawns as ``hydra.run.dir``) and must get the same one.
    """
    sweep = overrides is None  # the sweep folder's call passes no overrides
    if sweep != str(mode).endswith("MULTIRUN"):  # e.g. a single run reading the sweep folder's name (W&B group)
        return str(Path(parent) / timestamp)  # only named, not made
    key = (parent, timestamp, str(ckpt_path), str(overrides))
    if key not in _LAUNCHES:
        _LAUNCHES[key] = _new_launch(Path(parent), timestamp, ckpt_path, overrides, sweep)
    return _LAUNCHES[key]


def _new_launch(parent: Path, timestamp: str, ckpt_path: Any, overrides: Any, sweep: bool) -> str:
    if sweep:
        return _unique_folder(parent, timestamp)
    if ckpt_path not in (None, "", "auto", "None", "null"):
        ckpt = Path(str(ckpt_path)).expanduser().resolve()
        if ckpt.is_file() and ckpt.parent.name == "checkpoints" and (ckpt.parent.parent / ".hydra").is_dir():
            return str(ckpt.parent.parent)
    elif ckpt_path == "auto":
        run = matching_run(parent, list(overrides or []))
        if run is not None:
            return str(run)
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        return str(parent / f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}")
    run = env.get("TORCHELASTIC_RUN_ID", "none")
    if run != "none" and int(env.get("WORLD_SIZE", "1")) > 1:
        return str(parent / f"torchrun-{run}")
    return _unique_folder(parent, timestamp)


def _unique_folder(parent: Path, timestamp: str) -> str:
    """``parent/timestamp``, or ``-2``, ``-3``...: made with a mkdir that fails if it exists, so it is this run's alone."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            folder = parent / (timestamp if n == 1 else f"{timestamp}-{n}")
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            return str(folder)
    except OSError as err:
        # raised while Hydra resolves hydra.run.dir, before run_entry: Hydra would print a traceback,
        # and SystemExit is the one exception it lets through
        print(f"error: cannot create the run folder under {parent}: {err.strerror}; "
              "set GM_LOG_DIR (paths.log_dir) to a folder you can write", file=sys.stderr)
        raise SystemExit(2) from None
    raise GMError(f"{parent}: 10,000 runs started at {timestamp}; set hydra.run.dir")


def config_subdir(output_dir: str, timestamp: str) -> str:
    """Where Hydra saves the composed config: ``.hydra``, or ``.hydra/resumed-<timestamp>`` in a folder that has one.

    A resumed run continues in its checkpoint's folder; the config it started with (and its
    overrides, which ``ckpt_path=auto`` matches) stays, and each resumption's is kept beside it.
    """
    return f".hydra/resumed-{timestamp}" if (Path(output_dir) / ".hydra" / "config.yaml").is_file() else ".hydra"


#: overrides that do not make a run another run: where it resumes from, how long it trains, on what
RESUME_NEUTRAL = ("ckpt_path", "resume_override", "trainer.max_steps", "trainer.devices", "trainer.num_nodes", "data.num_workers")


def matching_run(parent: Path, overrides: list[str]) -> Path | None:
    """``ckpt_path=auto``: the newest run folder in ``parent`` with a ``last.ckpt``, started with the same overrides.

    "The same command again" is what a user repeating a command means; the keys of
    :data:`RESUME_NEUTRAL` may differ (a longer run, more devices). Newest by ``last.ckpt``'s
    modification time. The resumed run still checks the checkpoint's data, masking and model.
    """
    def essential(items: list[str]) -> list[str]:
        return sorted(o for o in items if o.split("=", 1)[0].lstrip("+~") not in RESUME_NEUTRAL)

    want, found = essential([str(o) for o in overrides]), []
    for last in parent.glob("*/checkpoints/last.ckpt"):
        try:
            saved = OmegaConf.load(last.parent.parent / ".hydra" / "overrides.yaml")
            if essential([str(o) for o in saved]) == want:
                found.append((last.stat().st_mtime_ns, last.parent.parent))
        except Exception:  # noqa: BLE001  a folder without (readable) overrides is no match
            continue
    return max(found)[1] if found else None


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
        raise GMError(f"trainer.devices={devices} is not a device count, a list of device ids, or auto; "
                      "set it to one of those") from None
    if count < 1:
        raise GMError(f"trainer.devices={devices} is below 1; set it to 1 or more, or to -1 or auto (all devices)")
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
        "gm.times": lambda a, b: a * b,
        "gm.config_subdir": config_subdir,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    if not OmegaConf.has_resolver("gm.launch_id"):  # cached: every later resolution (a sweep's jobs, ranks) gets the same folder
        OmegaConf.register_new_resolver("gm.launch_id", launch_id, use_cache=True)


#: Keys with a fixed type, checked before a run starts: (kind, null allowed, minimum). A wrong
#: type would otherwise surface deep inside Lightning or a resolver (``'<' not supported between
#: 'str' and 'int'``) without naming the key. Keys a config lacks, or still holds as an
#: interpolation (computed from keys checked here), are skipped.
TYPED_KEYS: dict[str, tuple[str, bool, float | None]] = {
    "seed": ("int", True, None),
    "k": ("int", True, 1),
    "shots": ("int", False, 1),
    "global_batch_size": ("int", True, 1),
    "val_fraction": ("number", False, 0),
    "export_hf": ("bool", False, None),
    "resample": ("bool", False, None),
    "skip_unavailable": ("bool", False, None),
    "skip_done": ("bool", False, None),
    "data.batch_size": ("int", False, 1),
    "data.val_batch_size": ("int", True, 1),
    "data.max_kmers": ("int", False, 1),
    "data.min_kmers": ("int", False, 1),
    "data.num_workers": ("int", False, 0),
    "data.val_fraction": ("number", False, 0),
    "data.reverse_complement": ("number", False, 0),
    "model.hidden_size": ("int", False, 1),
    "model.num_hidden_layers": ("int", False, 1),
    "model.num_attention_heads": ("int", False, 1),
    "model.intermediate_size": ("int", False, 1),
    "model.max_position_embeddings": ("int", False, 1),
    "optim.lr": ("number", False, 0),
    "optim.weight_decay": ("number", False, 0),
    "optim.warmup_steps": ("number", False, 0),
    "finetune.lr": ("number", False, 0),
    "finetune.epochs": ("int", False, 1),
    "finetune.batch_size": ("int", False, 1),
    "finetune.warmup_fraction": ("number", False, 0),
    "finetune.weight_decay": ("number", False, 0),
    "finetune.dropout": ("number", False, 0),
    "trainer.max_steps": ("int", False, -1),
    "trainer.max_epochs": ("int", True, -1),
    "trainer.num_nodes": ("int", False, 1),
    "trainer.val_check_interval": ("number", True, 0),
    "trainer.check_val_every_n_epoch": ("int", True, 1),
    "trainer.limit_val_batches": ("number", False, 0),
    "trainer.log_every_n_steps": ("int", False, 1),
    "trainer.gradient_clip_val": ("number", True, 0),
    "trainer.accumulate_grad_batches": ("int", False, 1),
    "callbacks.model_checkpoint.every_n_train_steps": ("int", True, 0),
}
_KINDS = {"int": "a whole number", "number": "a number", "bool": "true or false"}


def _shown(value: Any) -> str:
    """A value as the user wrote it on the command line (true, null), not as Python prints it."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _literal(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    """``(True, value)`` for a key the config sets to a plain value, else ``(False, None)``; resolves nothing."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent:
        return False, None
    if OmegaConf.is_interpolation(parent, leaf) or OmegaConf.is_missing(parent, leaf):
        return False, None
    return True, parent[leaf]


def check_config(cfg: DictConfig) -> None:
    """One line naming the key and value for a mistyped or out-of-range setting (``seed=abc``)."""
    for key, (kind, nullable, minimum) in TYPED_KEYS.items():
        found, value = _literal(cfg, key)
        if not found or (value is None and nullable):
            continue
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = {"int": is_number and isinstance(value, int), "number": is_number, "bool": isinstance(value, bool)}[kind]
        what = _KINDS[kind] + (" or null" if nullable else "")
        if not ok:
            raise GMError(f"{key}={_shown(value)} is not {what}; set {key} to {what}")
        if minimum is not None and value < minimum:
            raise GMError(f"{key}={value} is below {minimum:g}; set {key} to {minimum:g} or more")
    found, devices = _literal(cfg, "trainer.devices")
    if found:
        device_count(devices, OmegaConf.select(cfg, "trainer.accelerator", default="auto"))


#: OSErrors that are the machine's state, not a bug: what they mean, and what to do
DISK_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free space or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free space or write elsewhere"),
    errno.EROFS: ("read-only file system", "write elsewhere"),
    errno.EACCES: ("permission denied", "write elsewhere"),
}
#: where a Hydra entry point writes, and how to move it
RUN_DIRS = "GM_LOG_DIR (paths.log_dir) moves the run folders, GM_CACHE_DIR (paths.cache_dir) the caches"


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    """``err`` and everything it was raised from or while handling (OmegaConf and Hydra wrap errors twice)."""
    seen: set[int] = set()
    stack = [err]
    while stack:
        e = stack.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__]


def user_error(err: BaseException, dirs: str = RUN_DIRS) -> str | None:
    """The one line to show for an error the user can fix, wherever it sits in ``err``'s chain; None for a bug.

    ``dirs`` says how to write elsewhere (a full disk or a read-only folder).
    """
    chain = list(_chain(err))
    message = None
    if gm_error := next((e for e in chain if isinstance(e, GMError)), None):
        message = str(gm_error)
    elif disk := next((e for e in chain if isinstance(e, OSError) and e.errno in DISK_ERRORS), None):
        path = Path(str(disk.filename or "a file"))
        where = f"{path.parent}/" if path.name.startswith(".") else path  # a hidden temporary: name its folder
        meaning, todo = DISK_ERRORS[disk.errno]
        message = f"{where}: {meaning}; {todo}: {dirs}"
    elif misconfigured := next((e for e in chain if type(e).__name__ == "MisconfigurationException"), None):
        message = f"Lightning: {misconfigured}"  # Lightning's check of its settings (trainer.*, callbacks.*)
    elif isinstance(err, InstantiationException) and "unexpected keyword argument" in str(err.__cause__):
        key = re.search(r"full_key: (\S+)", str(err))
        message = f"{key.group(1) if key else 'config'}: {err.__cause__}; remove that key or fix its spelling"
    elif isinstance(err, InstantiationException) and "Trainer'" in str(err) and isinstance(err.__cause__, (ValueError, TypeError)):
        message = f"trainer: {err.__cause__}; fix that trainer.* setting"  # Lightning's check of its arguments
    return " ".join(message.split()) if message is not None else None


def _is_rank_zero() -> bool:
    """Not a DDP rank Lightning spawned, nor a later srun/torchrun rank: the process that speaks for the run."""
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def _is_sole_process() -> bool:
    """Not one of several srun/torchrun processes sharing a run folder (only a sole process may remove it)."""
    return _is_rank_zero() and all(os.environ.get(name, "1") == "1" for name in ("WORLD_SIZE", "SLURM_NTASKS"))


#: what a run folder holds before a run has done anything: Hydra's snapshot and the W&B run id train.py picks
SCAFFOLD = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "wandb/run_id")


def _scaffold_only(folder: Path, log_name: str, empty_log: bool) -> bool:
    """``folder`` holds the :data:`SCAFFOLD` and the run's log file (empty if ``empty_log``), nothing else."""
    for path in folder.rglob("*"):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink():
            return False
        if path.is_dir():
            if name not in (".hydra", "wandb"):
                return False
        elif name not in (*SCAFFOLD, log_name) or (empty_log and name == log_name and path.stat().st_size):
            return False
    return True


def _run_folder() -> tuple[Path, str] | None:
    """This Hydra job's output folder and log file name, or None outside Hydra."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    return Path(hydra.runtime.output_dir), f"{hydra.job.name}.log"


def run_entry(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point: user errors become one line (``error: ...``) and exit 2.

    Bugs keep their traceback, and ``HYDRA_FULL_ERROR=1`` shows it for user errors too. A run
    that fails before it wrote anything does not leave an empty run folder behind: the folder
    is removed only when, before ``fn`` ran, it held nothing but Hydra's snapshot and an empty
    log (so this invocation made it: a resumed run's folder holds checkpoints) and still holds
    nothing else (:data:`SCAFFOLD`): never a folder with checkpoints, metrics or results.
    """
    run = _run_folder()
    fresh = run is not None and _is_sole_process() and run[0].is_dir() and _scaffold_only(*run, empty_log=True)
    try:
        check_config(cfg)
        if run is not None and _is_rank_zero():
            log.info("run folder: %s", run[0])
        return fn(cfg)
    except BaseException as err:
        if isinstance(err, SystemExit) and err.code in (None, 0):
            raise
        if fresh and run[0].is_dir() and _scaffold_only(*run, empty_log=False):
            _remove_run_folder(*run)
        message = user_error(err)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _log_to_files(message)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _remove_run_folder(folder: Path, log_name: str) -> None:
    """Remove the scaffold and the log, then the folders if empty (never the working directory or above it)."""
    for name in (*SCAFFOLD, log_name):
        (folder / name).unlink(missing_ok=True)
    cwd = Path.cwd().resolve()
    for empty in (folder / ".hydra", folder / "wandb", folder):
        if empty.resolve() != cwd and empty.resolve() not in cwd.parents:
            with contextlib.suppress(OSError):
                empty.rmdir()


def _log_to_files(message: str) -> None:
    """Record the error in the run's log file, not on the console (where it is printed once, plainly)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def exit_on_user_error(main: Callable[[], int], dirs: str = "choose another --out") -> int:
    """:func:`run_entry`'s boundary for a plain (argparse) entry point: returns the exit status."""
    try:
        return main()
    except Exception as err:
        message = user_error(err, dirs)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


register_resolvers()
