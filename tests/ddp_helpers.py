"""Process entry points for the multi-process tests (module level, so that they pickle)."""

from __future__ import annotations

import datetime
import multiprocessing
import pickle
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import get_worker_info

import gm.genome
from gm.genome import GenomeDataModule


def _tag_worker(make_batch):
    """Wrap GenomeWindows.make_batch so each batch says which DataLoader worker produced it."""

    def tagged(self, windows, batch_index=0):
        batch = make_batch(self, windows, batch_index)
        info = get_worker_info()
        batch["worker"] = torch.tensor(-1 if info is None else info.id)
        return batch

    return tagged


def _collect(loader) -> dict[str, list]:
    out: dict[str, list] = {"windows": [], "stream_pos": [], "worker": [], "input_ids": []}
    for batch in loader:
        out["windows"].append(batch["windows"].numpy().copy())
        out["stream_pos"].append(tuple(int(v) for v in batch["stream_pos"]))
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
    gm.genome.GenomeWindows.make_batch = _tag_worker(gm.genome.GenomeWindows.make_batch)
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
