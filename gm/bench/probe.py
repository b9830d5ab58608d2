"""Part ``probe``: one few-shot probe (``callbacks=probe``) against the training steps between two probes."""

from __future__ import annotations

import argparse
import statistics

import torch

from gm.bench.common import TRAIN_STEPS, row, time_call
from gm.bench.inputs import first_batches, genome_data
from gm.bench.training import _quiet_frameworks, default_device, model_config, plain_run
from gm.masking.strategies import KmerSpanMasking
from gm.models.mlm import MLMModule
from gm.probe import ProbeCallback


def bench_probe(args: argparse.Namespace) -> list[dict]:
    """Seconds of one probe (the config's defaults unless ``--probe-*`` says otherwise) beside
    ``--probe-every`` training steps (the plain loop's median step time on the data module's batches).

    The share ``probe / (probe + every x step)`` is what the probe adds to a pretraining run.
    """
    _quiet_frameworks()
    device = default_device()
    repeats = max(1, args.repeats // 2)  # a probe of the logo model takes minutes on a CPU
    data = genome_data(max_kmers=args.max_kmers)
    probe = ProbeCallback(tasks=args.probe_tasks, shots=args.probe_shots, draws=args.probe_draws,
                          test_size=args.probe_test_size, every_n_steps=args.probe_every)
    rows = []
    for model in args.models:
        steps = args.steps or TRAIN_STEPS.get(model, 6)
        batches = first_batches(data, steps)
        encoder = model_config(model)
        module = MLMModule(encoder, KmerSpanMasking()).to(device)
        probe.setup(None, module, "fit")  # type: ignore[arg-type]  (the tokenizer is all setup reads)
        timed_steps = len(batches) - 2  # plain_run times the steps after its 2 warm-up steps
        runs: dict[str, list[float]] = {"train": [], "probe": []}
        for _ in range(repeats):  # interleaved; no memory run (the probe's memory is a few batches' activations)
            runs["train"].append(plain_run(encoder, batches, device) / timed_steps)
            runs["probe"].append(time_call(lambda m=module: probe.measure(m)))
        step_s, probe_s = statistics.median(runs["train"]), statistics.median(runs["probe"])
        between = probe.every_n_steps * step_s
        share = probe_s / (probe_s + between) * 100
        measure = f"{model}, probe vs {probe.every_n_steps} steps x 10 windows, {device.type}"
        rows.append(row("probe", measure, "seconds", probe_s, between, "one probe (" + ", ".join(t.name for t in probe.tasks)
                        + f"; {args.probe_shots} shots x {args.probe_draws} draws, test {args.probe_test_size})",
                        f"{probe.every_n_steps} training steps (plain loop)",
                        ours_runs_s=runs["probe"], step_runs_s=runs["train"], model=model, step_seconds=step_s,
                        probe_share_pct=share, every_n_steps=probe.every_n_steps, device=device.type, note=f"probe share of pretraining time {share:.1f}%"))
        del module
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows
