"""Parts ``masking`` (the vectorised strategies against the loop reference) and ``step`` (masking's share of a training step)."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from gm.bench.common import K, ROOT, row, side_by_side
from gm.bench.inputs import codes_to_str, load_genome
from gm.bench.training import model_config
from gm.data.tokenizer import INVALID_CODE, KmerTokenizer


def _masking_strategies() -> dict[str, object]:
    from gm.masking.strategies import BertMasking, GeneMaskMasking, GlobalPMIMasking, KmerSpanMasking, RandomSpanMasking

    return {
        "bert": BertMasking(),
        "kmer_span": KmerSpanMasking(),
        "genemask": GeneMaskMasking(),
        "genemask_position": GeneMaskMasking(rank_by="position"),
        "random_span": RandomSpanMasking(),
        "genemask_span_replace": GeneMaskMasking(replace="span"),
        "global_pmi": GlobalPMIMasking(),
        "global_pmi_position": GlobalPMIMasking(rank_by="position"),
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
            tokens / t_loop[name].seconds, f"gm.masking.strategies ({name})", "plain Python loop reference", t[name], t_loop[name])
        for name in strategies
    ]


def bench_step_share(args: argparse.Namespace) -> list[dict]:
    """Share of a training step (forward, backward, AdamW) that masking takes, tiny and logo models."""
    from gm.models.mlm import MLMModule

    rows = []
    ids = _real_batch(10)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    generator = torch.Generator().manual_seed(0)
    for model in ("tiny", "logo"):
        encoder = model_config(model)
        for name, strategy in _masking_strategies().items():
            if name not in ("kmer_span", "genemask", "global_pmi"):
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
        rows += _schedule_step_share(encoder, model, batch, generator, args.repeats)
    return rows


def _schedule_step_share(encoder: dict, model: str, batch: dict, generator: torch.Generator, repeats: int) -> list[dict]:
    """The schedules' share of a step: the per-batch pick (a host-side seeded draw) plus the picked
    strategy's masking, at step 50 of 100 (CM-STEP's q = 0.5: both strategies in turn)."""
    from gm.masking.schedules import PlateauSwitch, StepCurriculum
    from gm.masking.strategies import GeneMaskMasking, GlobalPMIMasking, KmerSpanMasking
    from gm.models.mlm import MLMModule, step_seed

    rows = []
    schedules = {"cm_step": StepCurriculum(KmerSpanMasking(), GlobalPMIMasking()),
                 "cm_gems": PlateauSwitch(GeneMaskMasking(), GlobalPMIMasking())}
    for name, schedule in schedules.items():
        module = MLMModule(encoder, schedule)
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
        counter = iter(range(1 << 30))

        def pick_and_mask():
            draw = step_seed(0, 5, 0, 0, next(counter)) / 2.0**63  # what MLMModule.training_strategy draws
            return module.mask(batch, generator, schedule.strategy_for(50, 100, draw))

        def step() -> None:
            module.mlm_loss(pick_and_mask(), batch["attention_mask"])["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        t = side_by_side({"mask": pick_and_mask, "step": step}, max(2, repeats // 2))
        r = row("step", f"{model}, batch 10 x 512, {name} (pick + masking)", "share", t["mask"].seconds / t["step"].seconds,
                float("nan"), "schedule pick + masking / whole training step", "-", t["step"])
        r["step_seconds"], r["mask_seconds"] = t["step"].seconds, t["mask"].seconds
        rows.append(r)
    return rows


