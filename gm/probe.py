"""A few-shot linear probe during pretraining: downstream quality against step (``callbacks=probe``).

Every ``every_n_steps`` optimiser steps (and at step 0 and at the end) the encoder is frozen and a
multinomial logistic regression is fitted on its mean-pooled features of ``shots`` examples per
class, ``draws`` times, for each task; each fit is scored on a fixed, class-balanced test subset.
The few-shot data (:func:`gm.data.splits.make_split`) and the metrics
(:func:`gm.models.classifier.classification_metrics`) are fine-tuning's own.

The probe draws nothing from the training random streams: its data come from numpy generators
seeded by (seed, task, draw), the fit is deterministic full-batch L-BFGS, and the global RNG states
are restored around it anyway, so a run logs the same losses with and without it. Under DDP rank 0
probes and every rank waits at a barrier: one value per step.
"""

from __future__ import annotations

import logging
import random
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch

from gm.data.labelled import Example
from gm.data.splits import ShotsUnavailableError, make_split
from gm.data.tasks import DEFAULT_DATA_DIR, TASKS, get_task
from gm.models.classifier import classification_metrics, undefined_metrics
from gm.utils import GMError

log = logging.getLogger(__name__)

#: the metrics logged per task (mean over draws), as ``probe/<task>/<metric>``; MCC also gets its std
METRICS = ("mcc", "accuracy")


@dataclass
class ProbeTask:
    """One task's probe data: the fixed test subset and each draw's training shots (raw sequences)."""

    name: str
    num_classes: int
    test: list[Example]
    draws: list[list[Example]]
    # filled in setup(), once the module's tokenizer is known: every distinct sequence tokenised once
    input_ids: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    row: dict[str, int] | None = None  # sequence -> its row in input_ids


def _seed(*parts: int | str) -> int:
    """A 32-bit seed mixed from (seed, task, draw): each draw's shots independent of the others."""
    ints = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) & 0xFFFFFFFF for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(1)[0])


def balanced_subset(examples: list[Example], num_classes: int, size: int, seed: int) -> list[Example]:
    """At most ``size`` examples, as many of each class as the smallest class allows, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    groups = [[e for e in examples if e.label == c] for c in range(num_classes)]
    per_class = min(size // num_classes, *(len(g) for g in groups))
    return [g[i] for g in groups for i in sorted(rng.permutation(len(g))[:per_class].tolist())]


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, l2: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (mean cross-entropy + ``l2``/2 ||W||^2), full-batch L-BFGS in float64.

    Features are standardised with the training rows' mean and std (returned, to apply to test rows);
    a fixed number of iterations from zero weights makes the fit deterministic. Returns (W, b, (mean, std)).
    """
    x = train_x.double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-8)
    x = (x - mean) / std
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, train_y) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach(), torch.stack([mean, std])


def score(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float | None]:
    """Fine-tuning's metrics (:data:`METRICS` of them) of one prediction; an undefined one is None (never 0 or 1)."""
    undefined = undefined_metrics(torch.bincount(labels, minlength=num_classes).tolist())
    values: dict[str, float | None] = {}
    for name, metric in classification_metrics(num_classes, sync_on_compute=False).items():  # rank 0 alone
        if name in METRICS:
            metric.update(probs, labels)
            values[name] = None if name in undefined else float(metric.compute())
    return values


class ProbeCallback(pl.Callback):
    """Fit linear probes on frozen encoder features every ``every_n_steps`` steps; log ``probe/<task>/*``.

    ``tasks``: few-shot task names (``prom_core``, ``prom_300``, ``cohn_enh``, ``splice_40``).
    ``shots`` per class, ``draws`` independent draws of them (seeded by (seed, task, draw), from the
    task's training pool minus its test set: :func:`make_split` with ``resample=True``), each scored on
    the same class-balanced subset of at most ``test_size`` rows of the task's test set (shipped, or
    carved with ``carve_seed`` as fine-tuning does). ``l2`` and ``max_iter``: the logistic regression's;
    ``batch_tokens``: padded tokens per encoder forward pass.
    """

    def __init__(
        self,
        tasks: Sequence[str] = ("prom_core", "prom_300", "cohn_enh", "splice_40"),
        every_n_steps: int = 1000,
        shots: int = 100,
        draws: int = 3,
        test_size: int = 1000,
        at_start: bool = True,
        seed: int | None = 0,
        carve_seed: int = 0,
        l2: float = 0.01,
        max_iter: int = 50,
        batch_tokens: int = 16384,
        data_dir: str | Path = DEFAULT_DATA_DIR,
    ) -> None:
        for key, value, least in (("every_n_steps", every_n_steps, 1), ("shots", shots, 1), ("draws", draws, 1),
                                  ("test_size", test_size, 2), ("max_iter", max_iter, 1), ("batch_tokens", batch_tokens, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise GMError(f"callbacks.probe.{key}={value}: must be a whole number >= {least}")
        try:
            strength = float(l2)
        except (TypeError, ValueError):
            strength = float("nan")
        if not strength >= 0:
            raise GMError(f"callbacks.probe.l2={l2}: must be a number >= 0")
        if isinstance(tasks, str) or not tasks:
            raise GMError(f"callbacks.probe.tasks={tasks}: give a list of few-shot tasks, e.g. [prom_core, splice_40]")
        self.every_n_steps, self.at_start, self.l2, self.max_iter = every_n_steps, bool(at_start), strength, max_iter
        self.batch_tokens = batch_tokens
        self.seed = int(seed or 0)
        self.tasks: list[ProbeTask] = []
        for name in tasks:
            key = str(name).strip().lower().replace("-", "_")
            if key not in TASKS:
                raise GMError(f"callbacks.probe.tasks: unknown few-shot task {name!r}; choose from {', '.join(TASKS)}")
            self.tasks.append(self._task(key, shots, draws, test_size, carve_seed, Path(data_dir)))
        self._last_step: int | None = None

    def _task(self, key: str, shots: int, draws: int, test_size: int, carve_seed: int, data_dir: Path) -> ProbeTask:
        spec = get_task(key)
        splits = []
        for draw in range(draws):
            try:
                splits.append(make_split(key, shots, _seed(self.seed, key, draw), data_dir, resample=True, carve_seed=carve_seed))
            except ShotsUnavailableError as err:
                raise GMError(f"callbacks.probe.shots={shots}: {err}; lower callbacks.probe.shots or drop "
                              f"{key} from callbacks.probe.tasks") from None
        test = balanced_subset(splits[0].test, spec.num_classes, test_size, _seed(self.seed, key, -1))
        return ProbeTask(spec.name, spec.num_classes, test, [s.train for s in splits])

    # ------------------------------------------------------------------------------ data
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Tokenise every task's sequences once with the module's tokenizer (its k and positions)."""
        if stage != "fit":
            return
        tokenizer = pl_module.tokenizer
        for task in self.tasks:
            sequences = list(dict.fromkeys(e.sequence for e in [*task.test, *(e for d in task.draws for e in d)]))
            longest = max(sequences, key=len)
            if len(longest) - tokenizer.k + 1 > tokenizer.max_kmers:
                raise GMError(f"callbacks.probe.tasks: {task.name}'s sequences are up to {len(longest)} bases = "
                              f"{len(longest) - tokenizer.k + 1} {tokenizer.k}-mers, more than the {tokenizer.max_kmers} "
                              f"the model's {tokenizer.max_length} positions hold (model.max_position_embeddings); "
                              f"drop {task.name} from callbacks.probe.tasks or use a model with more positions")
            encoding = tokenizer.encode(sequences)
            task.input_ids, task.lengths = encoding.input_ids, encoding.attention_mask.sum(1)
            task.row = {s: i for i, s in enumerate(sequences)}

    # ------------------------------------------------------------------------------ when
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        # step 0 (the untrained model), or a run resumed at a probe step (its CSV row was dropped: trained again)
        if (step == 0 and self.at_start) or (step > 0 and step % self.every_n_steps == 0):
            self.probe(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step > 0 and step != self._last_step and (step % self.every_n_steps == 0 or step == trainer.max_steps):
            self.probe(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_step and not trainer.received_sigterm:  # ended another way (max_epochs)
            self.probe(trainer, pl_module)

    # ------------------------------------------------------------------------------ what
    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Probe every task now on rank 0 and log it; every rank waits for it. Returns what was logged."""
        self._last_step = step = int(trainer.global_step)
        metrics: dict[str, float] = {}
        if trainer.is_global_zero:
            started = time.perf_counter()
            metrics = self.measure(pl_module)
            for logger in trainer.loggers:  # at the trainer's step, as Lightning logs (and saves) its own
                logger.log_metrics(metrics, step=step)
                logger.save()
            shown = ", ".join(f"{t.name} {metrics[f'probe/{t.name}/mcc']:.3f}" if f"probe/{t.name}/mcc" in metrics
                              else f"{t.name} undefined" for t in self.tasks)
            log.info("probe at step %d (MCC, mean of %d draws): %s (%.1f s)", step, len(self.tasks[0].draws), shown,
                     time.perf_counter() - started)
        trainer.strategy.barrier("probe")
        return metrics

    def measure(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """Every task's probe metrics for the module as it is now; its mode and the global RNG states are restored."""
        states = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
                  torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
        was_training = pl_module.training
        pl_module.eval()
        metrics: dict[str, float] = {}
        try:
            for task in self.tasks:
                metrics.update(self._probe_task(task, pl_module))
        finally:
            pl_module.train(was_training)
            torch.set_rng_state(states[0])
            np.random.set_state(states[1])
            random.setstate(states[2])
            if states[3] is not None:
                torch.cuda.set_rng_state_all(states[3])
        return metrics

    @torch.no_grad()
    def features(self, task: ProbeTask, pl_module: pl.LightningModule, pooling: str = "mean") -> torch.Tensor:
        """Each sequence's encoder features, float64 on the CPU.

        ``pooling="mean"`` (the probe's): the last hidden state averaged over the real tokens;
        ``"cls"``: the last hidden state at [CLS], what a fine-tuned classifier's pooler reads.
        """
        if pooling not in ("mean", "cls"):
            raise GMError(f"pooling={pooling!r}: choose mean or cls")
        device = pl_module.device
        encoder = pl_module.model.bert
        out = torch.empty(task.input_ids.shape[0], pl_module.model.config.hidden_size, dtype=torch.float64)
        order = torch.argsort(task.lengths, descending=True, stable=True)  # little padding per batch
        start = 0
        while start < order.numel():  # batches of about batch_tokens tokens: short sequences in big batches
            rows = max(1, self.batch_tokens // int(task.lengths[order[start]]))
            index, start = order[start : start + rows], start + rows
            width = int(task.lengths[index].max())
            ids = task.input_ids[index, :width].to(device)
            mask = (torch.arange(width)[None, :] < task.lengths[index][:, None]).to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                hidden = encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            if pooling == "cls":
                out[index] = hidden[:, 0].double().cpu()
                continue
            hidden = hidden.float() * mask[..., None]
            out[index] = (hidden.sum(1) / mask.sum(1, keepdim=True)).double().cpu()
        return out

    def _probe_task(self, task: ProbeTask, pl_module: pl.LightningModule) -> dict[str, float]:
        return self.fit_and_score(task, self.features(task, pl_module))

    def fit_and_score(self, task: ProbeTask, features: torch.Tensor) -> dict[str, float]:
        """Fit each draw's probe on ``features`` (rows as ``task.row``) and score it on the test rows: the logged metrics."""
        rows = lambda examples: torch.as_tensor([task.row[e.sequence] for e in examples])  # noqa: E731
        labels = lambda examples: torch.as_tensor([e.label for e in examples])  # noqa: E731
        test_x, test_y = features[rows(task.test)], labels(task.test)
        per_draw: dict[str, list[float | None]] = {name: [] for name in METRICS}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a few hundred rows: thread hand-offs cost more than the maths (10x on a busy CPU)
        try:
            for train in task.draws:
                weight, bias, (mean, std) = fit_probe(features[rows(train)], labels(train), task.num_classes, self.l2, self.max_iter)
                probs = (((test_x - mean) / std) @ weight + bias).softmax(-1).float()
                for name, value in score(probs, test_y, task.num_classes).items():
                    per_draw[name].append(value)
        finally:
            torch.set_num_threads(threads)
        out: dict[str, float] = {}
        for name, values in per_draw.items():
            if any(v is None for v in values):
                continue  # undefined in some draw: absent, never a made-up number
            out[f"probe/{task.name}/{name}"] = float(np.mean(values))
            if name == "mcc" and len(values) > 1:  # one draw has no spread
                out[f"probe/{task.name}/mcc_std"] = float(np.std(values, ddof=1))
        return out
