"""Benchmarks: our implementation and a baseline, timed side by side in the same process.

    python -m gm.bench [--parts tokenizer data npmi masking step train padding gpu targets]
                       [--repeats 5] [--json out.json] [--models tiny logo] [--steps N] ...

Machines are noisy, so each part runs ours and the baseline alternately (interleaved repeats)
and reports medians and their ratio; the ratio is the figure to compare across machines. Every
candidate's peak memory is recorded too (peak RSS of the process on CPU, peak allocated CUDA
memory on a GPU). A part is a function ``(args) -> list of rows`` registered in :data:`PARTS`;
add new ones there. ``targets`` is added automatically when ``data`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from gm.fasta import read_fasta
from gm.tokenizer import CODE_TO_BYTE, INVALID_CODE, PAD_ID, KmerTokenizer

ROOT = Path(__file__).resolve().parent.parent
GENOME = ROOT / "data" / "genome" / "hg38_chr2_1-2333275.fa.gz"
K = 6
VOCAB_SIZE = 4**K + 5
BATCH = 10  # the data module's default batch size (GeneMask's)
WARMUP_STEPS = 2  # training steps at the start of every run that are not timed
TRAIN_STEPS = {"tiny": 40, "logo": 8, "dnabert": 8}  # steps per run in the train part (~6 and ~10 s)
PADDING_BATCHES = {"tiny": 30, "logo": 8, "dnabert": 8}  # timed batches per run in the padding part
GPU_BATCH = {"dnabert": 32, "logo": 64}
MIB = 2**20


# ------------------------------------------------------------------------------------------ timing and memory
@dataclass
class Measured:
    """One candidate: median seconds of its timed runs, and the peak memory and increase of one more run."""

    seconds: float
    peak_mib: float
    delta_mib: float
    runs: list[float]


_LIBC: Any = None


def _release_memory(cuda: bool) -> None:
    """Give freed memory back (to the OS, or CUDA's cache) so the next run's increase is its own."""
    global _LIBC
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        return
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def _status_mib(field: str, pid: str = "self") -> float:
    """A ``VmRSS``/``VmHWM``-style field of /proc/<pid>/status in MiB (NaN where unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset VmHWM (the process's peak RSS) to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], object], device: torch.device | str | None = None) -> tuple[float, float, float]:
    """``(seconds, peak_mib, delta_mib)`` of one call: wall time, peak memory, increase over before.

    On CPU the peak is the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) and
    the increase is over the RSS just before the call; DataLoader workers are other processes
    and not included. On CUDA it is ``torch.cuda.max_memory_allocated`` and the increase over
    ``memory_allocated`` before. NaN where neither can be read.
    """
    cuda = device is not None and torch.device(device).type == "cuda"
    _release_memory(cuda)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / MIB
    else:
        before = _status_mib("VmRSS") if _reset_peak_rss() else float("nan")
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() / MIB
    else:
        peak = _status_mib("VmHWM") if before == before else float("nan")
    return seconds, peak, peak - before


def side_by_side(
    candidates: dict[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: bool = True,
    self_timed: bool = False,
    device: torch.device | str | None = None,
) -> dict[str, Measured]:
    """Each candidate over ``repeats`` interleaved runs (after one untimed warm-up each, if ``warmup``).

    ``self_timed`` candidates return their own seconds (a steady-state interval, say), used
    instead of the call's wall time. Memory is measured in one more run of each candidate after
    the timed ones: resetting the peak (and handing freed memory back to the OS first) would
    otherwise add page faults to short timed runs.
    """
    if warmup:
        for fn in candidates.values():
            fn()
    runs: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            if device is not None and torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            returned = fn()
            if device is not None and torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            runs[name].append(float(returned) if self_timed else time.perf_counter() - start)  # type: ignore[arg-type]
    memory = {name: peak_memory(fn, device) for name, fn in candidates.items()}
    return {
        name: Measured(seconds=statistics.median(times), peak_mib=memory[name][1], delta_mib=memory[name][2], runs=times)
        for name, times in runs.items()
    }


def row(
    part: str,
    measure: str,
    unit: str,
    ours: float,
    baseline: float,
    ours_name: str,
    baseline_name: str,
    ours_run: Measured | None = None,
    baseline_run: Measured | None = None,
    **extra: Any,
) -> dict:
    nan = float("nan")
    return {
        "part": part, "measure": measure, "unit": unit, "ours": ours, "baseline": baseline,
        "ratio": ours / baseline if baseline else nan, "ours_name": ours_name, "baseline_name": baseline_name,
        "ours_peak_mib": ours_run.peak_mib if ours_run else nan,
        "ours_delta_mib": ours_run.delta_mib if ours_run else nan,
        "baseline_peak_mib": baseline_run.peak_mib if baseline_run else nan,
        "baseline_delta_mib": baseline_run.delta_mib if baseline_run else nan,
        "ours_runs_s": ours_run.runs if ours_run else [],  # every timed run, to judge the noise
        "baseline_runs_s": baseline_run.runs if baseline_run else [],
        **extra,
    }


def time_call(fn: Callable[[], object]) -> float:
    """Wall seconds of one call (for a self-timed candidate that has no steady state to find)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class StepClock:
    """Seconds of the steps after the warm-up: from the end of step ``warmup - 1`` to the end of the last.

    Step ends are taken back to back, so data loading and framework work between steps count.
    On CUDA it synchronises at those two ends only, leaving the steps in between asynchronous.
    """

    def __init__(self, device: torch.device, steps: int, warmup: int = WARMUP_STEPS) -> None:
        if not 1 <= warmup < steps:
            raise ValueError(f"need 1 <= warm-up steps ({warmup}) < steps ({steps})")
        self.cuda, self.steps, self.warmup = device.type == "cuda", steps, warmup
        self.start = self.end = float("nan")

    def tick(self, step: int) -> None:
        """Call at the end of step ``step`` (0-based)."""
        if step in (self.warmup - 1, self.steps - 1):
            if self.cuda:
                torch.cuda.synchronize()
            if step == self.warmup - 1:
                self.start = time.perf_counter()
            else:
                self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.end - self.start


# ------------------------------------------------------------------------------------------ data helpers
def load_genome() -> np.ndarray:
    """Base codes of the embedded genome's first record."""
    return next(iter(read_fasta(GENOME, progress=False))).codes


def codes_to_str(codes: np.ndarray) -> str:
    return CODE_TO_BYTE[codes].tobytes().decode("ascii")


def seq_to_kmer_text(sequence: str, k: int = K) -> str:
    """DNABERT's ``seq2kmer``: the sequence as space-separated overlapping k-mers."""
    return " ".join(sequence[i : i + k] for i in range(len(sequence) - k + 1))


def hf_tokenizer(directory: str):
    """transformers' fast BERT tokenizer over our exported vocabulary (local files only)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from transformers import BertTokenizerFast

    KmerTokenizer(k=K).save_pretrained(directory)
    return BertTokenizerFast.from_pretrained(directory, local_files_only=True)


_CACHE_DIR: tempfile.TemporaryDirectory | None = None


def genome_data(**options: Any):
    """A set-up ``GenomeDataModule`` on the embedded genome; one temporary 2-bit cache per process."""
    from gm.genome import GenomeDataModule

    global _CACHE_DIR
    if _CACHE_DIR is None:
        _CACHE_DIR = tempfile.TemporaryDirectory(prefix="gm-bench-")  # removed at exit
    options = {"batch_size": BATCH, "num_workers": 0, **options}
    data = GenomeDataModule(str(GENOME), k=K, cache_dir=_CACHE_DIR.name, **options)
    data.prepare_data()
    data.setup("fit")
    return data


def first_batches(data, n: int) -> list[dict]:
    """The first ``n`` training batches of epoch 0 (the same ones every call)."""
    loader = data.train_dataloader()
    loader.load_state_dict({"epoch": 0, "batches": 0})
    iterator = iter(loader)
    try:
        return list(itertools.islice(iterator, n))
    finally:
        iterator.close()


def real_tokens(batches: list[dict]) -> int:
    """Non-padding positions ([CLS], k-mers, [SEP])."""
    return int(sum(int(b["attention_mask"].sum()) for b in batches))


def _children_pss_mib() -> float:
    """Proportional set size of this process's children (DataLoader workers), shared pages split fairly."""
    total, found = 0.0, False
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids = children.read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total, found = total + int(line.split()[1]) / 1024, True
            except (OSError, ValueError, IndexError):
                continue
    return total if found else float("nan")


# ------------------------------------------------------------------------------------------ training helpers
def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def model_config(name: str) -> dict[str, Any]:
    """``conf/model/<name>.yaml``: the encoder sizes (BertConfig fields)."""
    return _yaml(ROOT / "conf" / "model" / f"{name}.yaml")


def optim_config() -> dict[str, Any]:
    """``conf/optim/adamw.yaml``: lr, betas, eps, weight decay, warm-up (fraction or steps)."""
    return _yaml(ROOT / "conf" / "optim" / "adamw.yaml")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _warmup_steps(fraction_or_steps: float, total: int) -> int:
    return int(min(fraction_or_steps * total if 0 <= fraction_or_steps < 1 else fraction_or_steps, total))


def plain_run(encoder: dict, batches: list[dict], device: torch.device, compile_encoder: bool = False) -> float:
    """A hand-written PyTorch training loop over ``batches``; seconds of the steps after the warm-up.

    The same MLMModule (fresh, same init seed), masking, AdamW groups, linear warm-up and gradient
    clipping as a Lightning run; bf16 autocast and fused AdamW on CUDA.
    """
    from transformers import get_linear_schedule_with_warmup

    from gm.masking import KmerSpanMasking
    from gm.mlm import MLMModule, weight_decay_groups

    optim = optim_config()
    torch.manual_seed(0)
    module = MLMModule(encoder, KmerSpanMasking(), **optim).to(device)
    module.train()
    if compile_encoder:
        module.model.bert.compile()  # in place, as MLMModule(compile=True) does; the head stays eager
    optimizer = torch.optim.AdamW(
        weight_decay_groups(module.model, optim["weight_decay"]), lr=optim["lr"], betas=tuple(optim["betas"]),
        eps=optim["eps"], fused=device.type == "cuda",
    )
    warmup = _warmup_steps(optim["warmup_steps"], len(batches))
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, len(batches))
    generator = torch.Generator(device=device).manual_seed(0)
    clock = StepClock(device, len(batches))
    for step, batch in enumerate(batches):
        input_ids = batch["input_ids"].to(device, non_blocking=True)
        attention_mask = batch["attention_mask"].to(device, non_blocking=True)
        with _autocast(device):
            masked = module.mask({"input_ids": input_ids}, generator)
            out = module.mlm_loss(masked, attention_mask, accuracy=False)  # a bare loop logs nothing
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        clock.tick(step)
    return clock.seconds


def lightning_run(encoder: dict, batches: list[dict], device: torch.device, root: str) -> float:
    """``pytorch_lightning.Trainer.fit`` of MLMModule over ``batches``; seconds after the warm-up."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from gm.masking import KmerSpanMasking
    from gm.mlm import MLMModule

    clock = StepClock(device, len(batches))

    class Clock(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            clock.tick(batch_idx)

    torch.manual_seed(0)
    module = MLMModule(encoder, KmerSpanMasking(), **optim_config())
    trainer = pl.Trainer(
        max_steps=len(batches), accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true", gradient_clip_val=1.0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Clock()], default_root_dir=root,
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return clock.seconds


class _Windows(torch.utils.data.Dataset):
    """Token-id lists, one item per window, for transformers' Trainer."""

    def __init__(self, windows: list[list[int]]) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return {"input_ids": self.windows[index]}


def hf_windows(batches: list[dict]) -> list[list[int]]:
    """The batches' windows, unpadded, in batch order (attention masks are prefixes)."""
    return [
        row_ids[:n].tolist()
        for b in batches
        for row_ids, n in zip(b["input_ids"], b["attention_mask"].sum(1).tolist())
    ]


def hf_collator(tokenizer):
    """DNABERT-style MLM collator (15% of tokens); pads to a multiple of 8 as our data module does."""
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, pad_to_multiple_of=8)


def check_same_batches(batches: list[dict], windows: list[list[int]], tokenizer) -> None:
    """The HF pipeline's batches hold the same tokens in tensors of the same shapes as ours."""
    collator = hf_collator(tokenizer)
    for index, batch in enumerate(batches):
        collated = collator([{"input_ids": w} for w in windows[index * BATCH : (index + 1) * BATCH]])
        assert collated["input_ids"].shape == batch["input_ids"].shape, (index, collated["input_ids"].shape)
        assert torch.equal(collated["attention_mask"], batch["attention_mask"]), index


def hf_run(encoder: dict, windows: list[list[int]], steps: int, device: torch.device, tokenizer, root: str) -> float:
    """transformers' Trainer, DNABERT-style: the collator masks 15% of tokens, head on every position.

    The same windows in the same batches (sequential sampler, batch size 10) and the same
    optimiser settings; the collator pads to a multiple of 8 as our data module does, so both
    see tensors of the same shapes.
    """
    from transformers import (
        BertForMaskedLM, PrinterCallback, ProgressCallback, Trainer, TrainerCallback, TrainingArguments,
    )

    from gm.mlm import build_bert_config

    clock = StepClock(device, steps)

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.tick(state.global_step - 1)

    optim = optim_config()
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = BertForMaskedLM(build_bert_config(K, **encoder))
    args = TrainingArguments(
        output_dir=root, use_cpu=not cuda, bf16=cuda, report_to=[], per_device_train_batch_size=BATCH,
        max_steps=steps, save_strategy="no", logging_strategy="no", dataloader_num_workers=0,
        dataloader_pin_memory=cuda, max_grad_norm=1.0, learning_rate=optim["lr"], warmup_steps=optim["warmup_steps"],
        weight_decay=optim["weight_decay"], adam_beta1=optim["betas"][0], adam_beta2=optim["betas"][1],
        adam_epsilon=optim["eps"], lr_scheduler_type="linear", optim="adamw_torch_fused" if cuda else "adamw_torch",
        train_sampling_strategy="sequential", disable_tqdm=True, seed=0,
    )
    if cuda:
        _ = args.device
        args._n_gpu = 1  # one GPU, as the others use: several would make the Trainer wrap the model in DataParallel
    trainer = Trainer(model=model, args=args, train_dataset=_Windows(windows), data_collator=hf_collator(tokenizer),
                      processing_class=tokenizer, callbacks=[Clock()])
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)  # it would print the final metrics into the table
    trainer.train()
    return clock.seconds


def _quiet_frameworks() -> None:
    """Keep Lightning's and transformers' start-up chatter out of the table (after their imports set levels)."""
    import pytorch_lightning  # noqa: F401  (sets its logger to INFO on import)
    from transformers.utils import logging as hf_logging

    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    for module in ("pytorch_lightning", "lightning_fabric", "transformers", "torch.utils.data"):
        warnings.filterwarnings("ignore", module=module)


def _train_repeats(repeats: int) -> int:
    """Training runs are long: half the repeats, at least 2 (1 when asked for 1)."""
    return 1 if repeats <= 1 else max(2, repeats // 2)


# ------------------------------------------------------------------------------------------ parts
def bench_tokenizer(args: argparse.Namespace) -> list[dict]:
    """Encoding N random N-free windows of 515 bases (510 6-mers, a full 512-position row)."""
    tok = KmerTokenizer(k=K)
    codes = load_genome()
    rng = np.random.default_rng(0)
    bad = np.concatenate(([0], np.cumsum(codes == INVALID_CODE)))
    starts = rng.integers(0, codes.size - tok.max_bases, args.windows * 4)
    starts = starts[bad[starts + tok.max_bases] == bad[starts]][: args.windows]
    sequences = [codes_to_str(codes[s : s + tok.max_bases]) for s in starts]
    texts = [seq_to_kmer_text(s) for s in sequences]  # not timed: the baseline's input format
    bases = sum(map(len, sequences))
    with tempfile.TemporaryDirectory() as directory:
        hf = hf_tokenizer(directory)
        check = hf(texts[:2], padding=True, return_tensors="pt")["input_ids"]
        assert torch.equal(check, tok.encode(sequences[:2]).input_ids), "baseline and ours disagree"
        t = side_by_side(
            {
                "encode": lambda: tok.encode(sequences),
                "encode_kmer_text": lambda: tok.encode_kmer_text(texts),
                "hf": lambda: hf(texts, padding=True, return_tensors="pt"),
            },
            args.repeats,
        )
    measure, baseline = f"{len(sequences)} x 515 bases", bases / t["hf"].seconds
    hf_name = "BertTokenizerFast(k-mer text)"
    return [
        row("tokenizer", measure, "bases/s", bases / t["encode"].seconds, baseline, "KmerTokenizer.encode(raw)",
            hf_name, t["encode"], t["hf"]),
        row("tokenizer", measure, "bases/s", bases / t["encode_kmer_text"].seconds, baseline,
            "KmerTokenizer.encode_kmer_text", hf_name, t["encode_kmer_text"], t["hf"]),
    ]


def bench_data(args: argparse.Namespace) -> list[dict]:
    """Training batches (10 windows) with 0, 1 and 2 DataLoader workers against a DNABERT-style pipeline.

    Ours is timed in steady state: ``--data-batches`` batches, from the arrival of the 10th to
    the last, so worker start-up is not counted (it is paid once per epoch). The baseline is
    timed over ``--windows`` windows with the lengths ours produced.
    """
    skip = 10
    reference_data = genome_data()
    n_batches = min(max(args.data_batches, skip + 2), reference_data.train_set.num_batches(0))
    reference = first_batches(reference_data, n_batches)
    steady = reference[skip:]
    windows = sum(int(b["input_ids"].shape[0]) for b in steady)
    tokens = real_tokens(steady)
    worker_pss: dict[int, float] = {}

    def steady_state(workers: int) -> Callable[[], float]:
        loader = genome_data(num_workers=workers).train_dataloader()

        def run() -> float:
            loader.load_state_dict({"epoch": 0, "batches": 0})  # the same batches every repeat
            iterator = iter(loader)
            try:
                for index, _ in enumerate(itertools.islice(iterator, n_batches)):
                    if index == skip - 1:
                        start = time.perf_counter()
                end = time.perf_counter()
                if workers:
                    worker_pss[workers] = max(worker_pss.get(workers, 0.0), _children_pss_mib())
            finally:
                iterator.close()
            return end - start

        return run

    n_base = max(1, min(args.windows // BATCH, len(reference)))
    base_batches = reference[:n_base]
    lengths = np.concatenate([b["windows"][:, 2].numpy() for b in base_batches])  # bases per window
    base_tokens = real_tokens(base_batches)
    genome = codes_to_str(load_genome())  # DNABERT-style: the genome as one Python string
    with tempfile.TemporaryDirectory() as directory:
        hf = hf_tokenizer(directory)
        starts = np.random.default_rng(0).integers(0, len(genome) - lengths.max(), lengths.size).tolist()
        spans = list(zip(starts, lengths.tolist()))

        def baseline() -> list[dict]:
            out = []
            for i in range(0, len(spans), BATCH):
                texts = [seq_to_kmer_text(genome[s : s + n]) for s, n in spans[i : i + BATCH]]
                out.append(hf(texts, padding=True, return_tensors="pt"))
            return out

        assert int(sum(b["attention_mask"].sum() for b in baseline())) == base_tokens, "baseline and ours disagree"
        candidates: dict[str, Callable[[], object]] = {f"workers={w}": steady_state(w) for w in (0, 1, 2)}
        candidates["baseline"] = lambda: time_call(baseline)
        t = side_by_side(candidates, args.repeats, self_timed=True)
    base = t["baseline"]
    base_name = "str slice + seq2kmer + BertTokenizerFast"
    rows = []
    for workers in (0, 1, 2):
        ours = t[f"workers={workers}"]
        name = f"train_dataloader, num_workers={workers}"
        pss = worker_pss.get(workers, float("nan")) if workers else 0.0
        extra = {"num_workers": workers, "ours_workers_pss_mib": pss}
        if workers:
            extra["note"] = f"workers' PSS {pss:.0f} MiB"
        measure = f"{windows} windows after 10 batches, batch 10"
        rows.append(row("data", measure, "windows/s", windows / ours.seconds, lengths.size / base.seconds, name,
                        base_name, ours, base, **extra))
        rows.append(row("data", measure, "tokens/s", tokens / ours.seconds, base_tokens / base.seconds, name,
                        base_name, ours, base, **extra))
    return rows


def bench_npmi(args: argparse.Namespace) -> list[dict]:
    """Counting every n-gram (n = 1..6): ours against a straightforward pure-Python counter."""
    import collections

    from gm.npmi import count_codes, count_ngrams

    codes = load_genome()
    clean = codes[codes != INVALID_CODE]
    piece = codes[10_000 : 10_000 + args.npmi_bases]  # after the leading N run; Ns inside are skipped by both
    text = codes_to_str(piece)

    def python_counter() -> dict:
        counts = {}
        for n in range(1, K + 1):
            counts[n] = collections.Counter(text[i : i + n] for i in range(len(text) - n + 1) if "N" not in text[i : i + n])
        return counts

    ours_counts = count_codes(piece, K)
    assert sum(python_counter()[K].values()) == int(ours_counts[K].sum()), "counters disagree"
    t = side_by_side({"ours": lambda: count_codes(piece, K), "python": python_counter}, args.repeats)
    bases = piece.size
    whole = side_by_side({"end_to_end": lambda: count_ngrams(GENOME, K, progress=False)}, args.repeats)["end_to_end"]
    genome_rate = clean.size / whole.seconds
    rows = [
        row("npmi", f"count n=1..6, {bases / 1e3:.0f} kb", "bases/s", bases / t["ours"].seconds,
            bases / t["python"].seconds, "gm.npmi.count_codes", "collections.Counter over substrings", t["ours"],
            t["python"]),
        row("npmi", "count_ngrams(chr2 sample .fa.gz)", "bases/s", genome_rate, float("nan"),
            "read + 2-bit codes + count, end to end", "-", whole),
    ]
    rows[-1]["extrapolated_3.1Gb_minutes"] = 3.1e9 / genome_rate / 60
    return rows


def _masking_strategies() -> dict[str, object]:
    from gm.masking import BertMasking, GeneMaskMasking, KmerSpanMasking, RandomSpanMasking

    return {
        "bert": BertMasking(),
        "kmer_span": KmerSpanMasking(),
        "genemask": GeneMaskMasking(),
        "genemask_position": GeneMaskMasking(rank_by="position"),
        "random_span": RandomSpanMasking(),
        "genemask_span_replace": GeneMaskMasking(replace="span"),
    }


def _real_batch(batch: int, length: int = 512) -> torch.Tensor:
    """``batch`` full-length rows of real k-mers from the embedded genome."""
    tok = KmerTokenizer(k=K, max_length=length)
    codes = load_genome()
    rng = np.random.default_rng(1)
    bad = np.concatenate(([0], np.cumsum(codes == INVALID_CODE)))
    starts = rng.integers(0, codes.size - tok.max_bases, batch * 4)
    starts = starts[bad[starts + tok.max_bases] == bad[starts]][:batch]
    return tok.encode([codes_to_str(codes[s : s + tok.max_bases]) for s in starts]).input_ids


def bench_masking(args: argparse.Namespace) -> list[dict]:
    """Masking a 64 x 512 batch on one CPU thread: every strategy, and the plain-loop reference."""
    sys.path.insert(0, str(ROOT))
    from tests.masking_reference import loop_masking  # the tests' oracle: plain Python loops

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ids = _real_batch(64)
        generator = torch.Generator().manual_seed(0)
        strategies = _masking_strategies()
        candidates = {name: (lambda s=s: s(ids, generator)) for name, s in strategies.items()}
        loop_ids = ids.tolist()
        loops = {name: (lambda s=s: loop_masking(s, loop_ids, seed=0)) for name, s in strategies.items()}
        t = side_by_side(candidates, args.repeats)
        t_loop = side_by_side(loops, max(1, args.repeats // 2))
    finally:
        torch.set_num_threads(threads)
    tokens = ids.numel()
    return [
        row("masking", f"{name}, 64 x 512, 1 thread", "tokens/s", tokens / t[name].seconds,
            tokens / t_loop[name].seconds, f"gm.masking ({name})", "plain Python loop reference", t[name], t_loop[name])
        for name in strategies
    ]


def bench_step_share(args: argparse.Namespace) -> list[dict]:
    """Share of a training step (forward, backward, AdamW) that masking takes, tiny and logo models."""
    from gm.mlm import MLMModule

    rows = []
    ids = _real_batch(10)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    generator = torch.Generator().manual_seed(0)
    for model in ("tiny", "logo"):
        encoder = model_config(model)
        for name, strategy in _masking_strategies().items():
            if name not in ("kmer_span", "genemask"):
                continue
            module = MLMModule(encoder, strategy)
            optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)

            def step() -> None:
                masked = module.mask(batch, generator)
                module.mlm_loss(masked, batch["attention_mask"])["loss"].backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            t = side_by_side({"mask": lambda: module.mask(batch, generator), "step": step}, max(2, args.repeats // 2))
            r = row("step", f"{model}, batch 10 x 512, {name}", "share", t["mask"].seconds / t["step"].seconds,
                    float("nan"), "masking / whole training step", "-", t["step"])
            r["step_seconds"], r["mask_seconds"] = t["step"].seconds, t["mask"].seconds
            rows.append(r)
    return rows


def bench_train(args: argparse.Namespace) -> list[dict]:
    """A training step three ways, on the same batches and masking: Lightning, a plain loop, HF Trainer.

    Lightning's cost over the plain loop is framework overhead; the HF Trainer row is what
    DNABERT-style code pays (collator masking, prediction head on every position). Runs are
    interleaved (Lightning, plain, HF, repeat); each run's first 2 steps are not timed.
    """
    _quiet_frameworks()
    device = default_device()
    repeats = _train_repeats(args.repeats)
    data = genome_data(max_kmers=args.max_kmers)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        tokenizer = hf_tokenizer(str(Path(directory) / "tokenizer"))
        assert tokenizer.pad_token_id == PAD_ID

        def pipelines(encoder: dict, batches: list[dict]) -> dict[str, Callable[[], float]]:
            windows = hf_windows(batches)
            check_same_batches(batches, windows, tokenizer)
            return {
                "lightning": lambda: lightning_run(encoder, batches, device, directory),
                "plain": lambda: plain_run(encoder, batches, device),
                "hf": lambda: hf_run(encoder, windows, len(batches), device, tokenizer, directory),
            }

        for fn in pipelines(model_config("tiny"), first_batches(data, WARMUP_STEPS + 1)).values():
            fn()  # one-time costs (lazy imports, first fits) out of the timed runs and their memory
        for model in args.models:
            steps = args.steps or TRAIN_STEPS.get(model, 6)
            batches = first_batches(data, steps)
            steps = len(batches)
            timed = batches[WARMUP_STEPS:]
            tokens = real_tokens(timed)
            t = side_by_side(pipelines(model_config(model), batches), repeats, warmup=False, self_timed=True,
                             device=device)
            lightning, plain, hf = t["lightning"], t["plain"], t["hf"]
            measure = f"{model}, {len(timed)} steps x 10 windows, {device.type}"
            overhead = (lightning.seconds / plain.seconds - 1) * 100
            common = {"model": model, "steps_timed": len(timed), "tokens_timed": tokens, "device": device.type}
            names = ("Lightning Trainer + MLMModule", "plain PyTorch loop, same module")
            note = f"Lightning overhead {overhead:+.1f}%"
            for unit, amount in (("steps/s", len(timed)), ("tokens/s", tokens)):
                rows.append(row("train", measure, unit, amount / lightning.seconds, amount / plain.seconds, *names,
                                lightning, plain, overhead_pct=overhead, note=note, **common))
            hf_names = ("Lightning Trainer + MLMModule", "HF Trainer + MLM collator (head on all)")
            for unit, amount in (("steps/s", len(timed)), ("tokens/s", tokens)):
                rows.append(row("train", measure, unit, amount / lightning.seconds, amount / hf.seconds, *hf_names,
                                lightning, hf, **common))
    return rows


def _padding_stats(batches: list[dict]) -> dict[str, Any]:
    masks = [b["attention_mask"] for b in batches]
    real = np.array([int(m.sum()) for m in masks], dtype=np.float64)
    positions = np.array([m.numel() for m in masks], dtype=np.float64)
    lengths = np.concatenate([b["windows"][:, 2].numpy() for b in batches])
    return {
        "padding_share_total": float(1 - real.sum() / positions.sum()),
        "padding_share_mean_per_batch": float(np.mean(1 - real / positions)),
        "batches": len(batches),
        "windows": int(lengths.size),
        "window_bases_mean": float(lengths.mean()),
        "window_bases_quartiles": [float(q) for q in np.percentile(lengths, [25, 50, 75])],
    }


def cut_batches(windows_set, plan) -> list[dict]:
    """Consecutive windows of ``plan`` as batches of 10, tokenised and padded by ``windows_set``'s rules."""
    return [windows_set.make_batch(plan.take(slice(start, start + BATCH)), start // BATCH)
            for start in range(0, len(plan), BATCH)]


def bench_padding(args: argparse.Namespace) -> list[dict]:
    """Length bucketing: padded share over a whole epoch, off (naive batches) against on, and its training gain.

    The gain is measured on the same windows: the first bucketed batches, and the same windows
    in random batches (what naive batching makes of them); a plain training loop runs both, side
    by side, after the same 2 warm-up batches.
    """
    _quiet_frameworks()
    naive = genome_data(bucket_batches=0, pad_to_multiple_of=1, max_kmers=args.max_kmers)
    bucketed = genome_data(bucket_batches=100, pad_to_multiple_of=8, max_kmers=args.max_kmers)
    epochs: dict[str, list[dict]] = {}
    runs: dict[str, Measured] = {}
    for name, data in (("naive", naive), ("bucketed", bucketed)):
        whole_epoch = lambda data=data, name=name: epochs.__setitem__(name, first_batches(data, 10**9))  # noqa: E731
        seconds, peak, delta = peak_memory(whole_epoch)
        runs[name] = Measured(seconds, peak, delta, [seconds])
    stats = {name: _padding_stats(batches) for name, batches in epochs.items()}
    del epochs
    on, off = stats["bucketed"], stats["naive"]
    names = ("bucket_batches=100, pad_to_multiple_of=8", "bucket_batches=0, pad_to_multiple_of=1")
    measure = f"epoch 0, {on['batches']} batches of 10"
    quartiles = f"quartiles {on['window_bases_quartiles']} vs {off['window_bases_quartiles']}"
    per_batch = f"mean per batch {on['padding_share_mean_per_batch']:.3f} vs {off['padding_share_mean_per_batch']:.3f}"
    rows = [
        row("padding", measure, "pad share", on["padding_share_total"], off["padding_share_total"], *names,
            runs["bucketed"], runs["naive"], ours_stats=on, baseline_stats=off, note=per_batch),
        row("padding", measure, "bases/win", on["window_bases_mean"], off["window_bases_mean"], *names,
            runs["bucketed"], runs["naive"], note=f"window length (mean) unchanged; {quartiles}"),
    ]

    device = default_device()
    repeats = _train_repeats(args.repeats)
    plan = bucketed.train_set.plan(0)
    for model in args.models:
        n = args.padding_batches or PADDING_BATCHES.get(model, 8)
        n = min(n, len(plan) // BATCH - WARMUP_STEPS)
        chosen = plan.take(slice(0, n * BATCH))
        shuffled = chosen.take(np.random.default_rng(0).permutation(n * BATCH))
        warm = cut_batches(bucketed.train_set, plan.take(slice(n * BATCH, (n + WARMUP_STEPS) * BATCH)))
        bucketed_batches = cut_batches(bucketed.train_set, chosen)
        naive_batches = cut_batches(naive.train_set, shuffled)
        tokens = real_tokens(bucketed_batches)
        assert tokens == real_tokens(naive_batches), "the two batchings hold different windows"
        encoder = model_config(model)
        t = side_by_side(
            {"bucketed": lambda: plain_run(encoder, warm + bucketed_batches, device),
             "naive": lambda: plain_run(encoder, warm + naive_batches, device)},
            repeats, warmup=False, self_timed=True, device=device,
        )
        positions = {name: sum(b["input_ids"].numel() for b in batches)
                     for name, batches in (("bucketed", bucketed_batches), ("naive", naive_batches))}
        rows.append(row(
            "padding", f"{model}, plain loop, same {n * BATCH} windows", "tokens/s", tokens / t["bucketed"].seconds,
            tokens / t["naive"].seconds, *names, t["bucketed"], t["naive"], model=model, tokens_timed=tokens,
            positions=positions, device=device.type,
            note=f"positions {positions['bucketed']} vs {positions['naive']} (real {tokens})",
        ))
    return rows


def bench_gpu(args: argparse.Namespace) -> list[dict]:
    """bf16 training steps on full-length batches on a GPU: eager against ``torch.compile`` of the encoder, with MFU.

    Plain loop (no framework), bf16 autocast, fused AdamW, SDPA attention, the same masking. MFU
    is achieved model FLOP/s (gm.flops, head on the masked share) over the GPU's dense bf16 peak.
    """
    if not torch.cuda.is_available():
        return [{"part": "gpu", "measure": "skipped", "skipped": "no CUDA device"}]
    return compile_rows(args, torch.device("cuda"), torch.cuda.get_device_name())


def compile_rows(args: argparse.Namespace, device: torch.device, device_name: str) -> list[dict]:
    """The gpu part's measurements on ``device`` (any device: a CPU run checks the code path)."""
    from gm.flops import mfu, peak_flops, training_flops_per_token
    from gm.masking import KmerSpanMasking

    peak = peak_flops(device_name)
    repeats = _train_repeats(args.repeats)
    rows = []
    for model in args.gpu_models:
        encoder = model_config(model)
        length = int(encoder.get("max_position_embeddings", 512))
        batch_size = args.gpu_batch or GPU_BATCH.get(model, 32)
        ids = _real_batch(batch_size, length)
        on_device = ids.to(device)  # copied once: a pageable host-to-device copy per step would sync the stream
        batches = [{"input_ids": on_device, "attention_mask": torch.ones_like(on_device)}] * args.gpu_steps
        masked_fraction = float(KmerSpanMasking()(ids, torch.Generator().manual_seed(0)).masked.float().mean())
        flops = training_flops_per_token(encoder, length, VOCAB_SIZE, masked_fraction)
        timed_steps = args.gpu_steps - WARMUP_STEPS
        t = side_by_side(
            {"compiled": lambda: plain_run(encoder, batches, device, compile_encoder=True),
             "eager": lambda: plain_run(encoder, batches, device)},
            repeats, warmup=False, self_timed=True, device=device,
        )
        tokens = timed_steps * ids.numel()
        compiled, eager = t["compiled"], t["eager"]
        precision = "bf16" if device.type == "cuda" else "fp32"
        names = (f"torch.compile(encoder), {precision}", f"eager, {precision}")
        common = {"model": model, "batch": batch_size, "seq_len": length, "device_name": device_name,
                  "peak_bf16_flops": peak, "flops_per_token": flops, "masked_fraction": masked_fraction}
        measure = f"{model}, {batch_size} x {length}, {timed_steps} steps, {device.type}"
        mfu_compiled, mfu_eager = mfu(tokens / compiled.seconds, flops, peak), mfu(tokens / eager.seconds, flops, peak)
        note = f"MFU {mfu_compiled:.1%} vs {mfu_eager:.1%}"
        rows.append(row("gpu", measure, "steps/s", timed_steps / compiled.seconds, timed_steps / eager.seconds, *names,
                        compiled, eager, **common, note=note))
        rows.append(row("gpu", measure, "tokens/s", tokens / compiled.seconds, tokens / eager.seconds, *names,
                        compiled, eager, **common, note=note))
        rows.append(row("gpu", measure, "MFU", mfu_compiled, mfu_eager, *names, compiled, eager, **common))
    return rows


def bench_targets(args: argparse.Namespace) -> list[dict]:
    """Data-pipeline target: tokens/s of the best worker count >= 10x what dnabert consumes on one H100.

    Consumption = 0.4 (MFU) x 989e12 (H100 SXM dense bf16) / training FLOPs per token of dnabert
    at 512 positions (gm.flops). Uses this run's ``data`` rows, or measures them.
    """
    from gm.flops import PEAK_BF16_FLOPS, training_flops_per_token

    data_rows = [r for r in getattr(args, "completed_rows", []) if r["part"] == "data" and r["unit"] == "tokens/s"]
    if not data_rows:
        data_rows = [r for r in bench_data(args) if r["unit"] == "tokens/s"]
    best = max(data_rows, key=lambda r: r["ours"])
    mfu_target, peak, target = 0.4, PEAK_BF16_FLOPS["H100"], 10.0
    flops = training_flops_per_token(model_config("dnabert"), 512, VOCAB_SIZE)
    consumption = mfu_target * peak / flops
    ratio = best["ours"] / consumption
    how = (f"dnabert consumes {mfu_target} x {peak:.3g} / {flops:.4g} FLOP/token = {consumption:.3g} tokens/s; "
           f"target >= {target:g}x: {'met' if ratio >= target else 'NOT met'}")
    result = row("targets", "data tokens/s / dnabert on H100 at 40% MFU", "tokens/s", best["ours"], consumption,
                 best["ours_name"], "dnabert, 1 H100 SXM, 40% MFU", flops_per_token=flops, mfu=mfu_target,
                 peak_flops=peak, target_ratio=target, met=bool(ratio >= target), note=how)
    result.update({key: best[key] for key in ("ours_peak_mib", "ours_delta_mib")})  # the loader's: nothing ran here
    return [result]


PARTS: dict[str, Callable[[argparse.Namespace], list[dict]]] = {
    "tokenizer": bench_tokenizer,
    "data": bench_data,
    "npmi": bench_npmi,
    "masking": bench_masking,
    "step": bench_step_share,
    "train": bench_train,
    "padding": bench_padding,
    "gpu": bench_gpu,
    "targets": bench_targets,
}


# ------------------------------------------------------------------------------------------ entry point
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError, ValueError):
        info["load_average"] = list(os.getloadavg())
    return info


def format_row(r: dict) -> str:
    """One table line: rates, ratio, peak memory and increase (ours/baseline, MiB), candidates."""
    if "skipped" in r:
        return f"{r['part']}: skipped ({r['skipped']})"
    memory = (f"{r['ours_peak_mib']:>6.0f}/{r['baseline_peak_mib']:<6.0f} "
              f"{r['ours_delta_mib']:>6.0f}/{r['baseline_delta_mib']:<6.0f}")
    note = f"  [{r['note']}]" if r.get("note") else ""
    if r["baseline"] == r["baseline"]:  # not NaN: a side-by-side comparison
        return (f"{r['part']:<9} {r['measure']:<44} {r['unit']:<9} {r['ours']:>10.4g} {r['baseline']:>10.4g} "
                f"{r['ratio']:>7.3g}x {memory}  {r['ours_name']} vs {r['baseline_name']}{note}")
    extra = {k: round(v, 4) for k, v in r.items() if k.endswith(("minutes", "seconds")) and k != "part_seconds"}
    return (f"{r['part']:<9} {r['measure']:<44} {r['unit']:<9} {r['ours']:>10.4g} {'':>10} {'':>8} {memory}  "
            f"{r['ours_name']} {extra or ''}{note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gm.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed runs per candidate (median); "
                        "training parts use max(2, repeats // 2)")
    parser.add_argument("--windows", type=int, default=1000, help="windows per timed run (tokenizer; data baseline)")
    parser.add_argument("--data-batches", type=int, default=200,
                        help="batches per data-loader run, timed after the 10th")
    parser.add_argument("--npmi-bases", type=int, default=300_000, help="bases counted side by side in the npmi part")
    parser.add_argument("--models", nargs="+", default=["tiny", "logo"],
                        help="conf/model configs for the train and padding parts")
    parser.add_argument("--steps", type=int, help=f"training steps per run in the train part (default {TRAIN_STEPS})")
    parser.add_argument("--max-kmers", type=int, default=510, help="longest window (k-mers) in the train and padding "
                        "parts; the data module's default 510 is a full 512-position row")
    parser.add_argument("--padding-batches", type=int,
                        help=f"timed batches in the padding part (default {PADDING_BATCHES})")
    parser.add_argument("--gpu-models", nargs="+", default=["dnabert", "logo"],
                        help="conf/model configs for the gpu part")
    parser.add_argument("--gpu-batch", type=int,
                        help=f"batch size (full 512-position rows) in the gpu part (default {GPU_BATCH})")
    parser.add_argument("--gpu-steps", type=int, default=20, help="training steps per run in the gpu part")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    for name in {*args.models, *args.gpu_models}:
        if not (ROOT / "conf" / "model" / f"{name}.yaml").is_file():
            parser.error(f"no model config conf/model/{name}.yaml")
    if args.steps is not None and args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must exceed the {WARMUP_STEPS} warm-up steps")
    if args.gpu_steps <= WARMUP_STEPS:
        parser.error(f"--gpu-steps must exceed the {WARMUP_STEPS} warm-up steps")
    parts = list(dict.fromkeys(args.parts))
    if "data" in parts and "targets" not in parts:
        parts.append("targets")
    logging.basicConfig(level=logging.WARNING)

    header = (f"{'part':<9} {'measure':<44} {'unit':<9} {'ours':>10} {'baseline':>10} {'ratio':>8} "
              f"{'peak MiB o/b':>13} {'+MiB o/b':>13}  candidates")
    print(header)
    print("-" * len(header))
    rows: list[dict] = []
    args.completed_rows = rows
    for name in parts:
        start = time.perf_counter()
        part_rows = PARTS[name](args)
        seconds = round(time.perf_counter() - start, 1)
        for r in part_rows:
            r["part_seconds"] = seconds
            print(format_row(r), flush=True)
        rows.extend(part_rows)
    if args.json:
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "completed_rows"}
        report = {"command": "python -m gm.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "machine": {**machine(), "load_average_at_start": load_at_start}, "repeats": args.repeats,
                  "windows": args.windows, "options": options, "rows": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
