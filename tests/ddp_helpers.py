"""Process entry points for the multi-process tests (module level, so that they pickle)."""

from __future__ import annotations

import datetime
import json
import multiprocessing
import pickle
import traceback
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import get_worker_info

import gm.data.genome
from gm.data.genome import GenomeDataModule


def _tag_worker(make_batch):
    """Wrap GenomeWindows.make_batch so each batch says which DataLoader worker produced it."""

    def tagged(self, windows, batch_index=0):
        batch = make_batch(self, windows, batch_index)
        info = get_worker_info()
        batch["worker"] = torch.tensor(-1 if info is None else info.id)
        return batch

    return tagged


def _collect(loader) -> dict[str, list]:
    out: dict[str, list] = {"windows": [], "stream_pos": [], "batch_key": [], "worker": [], "input_ids": []}
    for batch in loader:
        out["windows"].append(batch["windows"].numpy().copy())
        out["stream_pos"].append(tuple(int(v) for v in batch["stream_pos"]))
        out["batch_key"].append(tuple(batch["batch_key"]))
        out["worker"].append(int(batch["worker"]))
        out["input_ids"].append(batch["input_ids"].numpy().copy())
    return out


def ddp_epochs(
    rank: int, world_size: int, init_file: str, fasta: str, cache_dir: str, out_dir: str, kwargs: dict
) -> None:
    """One DDP rank on CPU (gloo): prepare (rank 0) and set up the data module as Lightning would
    without a Trainer, then read two training epochs and the validation set; pickle what it saw."""
    torch.set_num_threads(1)
    # A process started by torch.multiprocessing.spawn inherits "spawn" as its default start method;
    # a rank started as Lightning's DDP does (a fresh interpreter) forks its DataLoader workers.
    multiprocessing.set_start_method("fork", force=True)
    gm.data.genome.GenomeWindows.make_batch = _tag_worker(gm.data.genome.GenomeWindows.make_batch)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    result: dict = {"rank": rank}
    try:
        dm = GenomeDataModule(fasta, cache_dir=cache_dir, **kwargs)
        if rank == 0:  # Lightning: prepare_data on one process, then everyone waits
            dm.prepare_data()
        dist.barrier()
        dm.setup("fit")
        result["dataset_rank"] = (dm.train_set.rank, dm.train_set.world_size, dm.val_set.rank, dm.val_set.world_size)
        loader = dm.train_dataloader()
        result["num_workers"] = loader.num_workers
        result["train"] = [_collect(loader) for _ in range(2)]
        result["val"] = _collect(dm.val_dataloader())
        counts = torch.tensor([len(result["train"][0]["windows"]), len(result["train"][1]["windows"])])
        gathered = [torch.zeros_like(counts) for _ in range(world_size)]
        dist.all_gather(gathered, counts)  # a collective: the ranks are really talking to each other
        result["gathered_counts"] = [g.tolist() for g in gathered]
    except BaseException:  # noqa: BLE001 (reported to the parent)
        result["error"] = traceback.format_exc()
    finally:
        Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
        dist.destroy_process_group()


class RecordSteps(pl.Callback):
    """Test probe for launch tests: each trained batch's key and loss, and each optimiser step's
    gradient norm (after accumulation and the DDP all-reduce), written per rank as JSON."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.batches: list[dict] = []
        self.grad_norms: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step  # the optimiser step this batch contributes to

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = float(outputs["loss"]) * trainer.accumulate_grad_batches  # Lightning hands back loss / accumulation
        self.batches.append({"key": list(batch["batch_key"]), "loss": loss, "step": self._step})

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad.double().pow(2).sum() for p in pl_module.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.stack(grads).sum().sqrt()))

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "node_rank": trainer.node_rank,
            "accumulate": trainer.accumulate_grad_batches,
            "environment": type(getattr(trainer.strategy, "cluster_environment", None)).__name__,
            "batches": self.batches,
            "grad_norms": self.grad_norms,
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
