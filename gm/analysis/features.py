"""``python analyze.py features``: what pretrained encoders' frozen features look like on one task.

Made for issue 15's Prom-core question (pretrained models fine-tuning *below* random
initialisation): is it collapsed representations? Every model is read on the same class-balanced
test rows of the task, with two poolings: ``mean`` (the probe's) and ``cls`` (the [CLS] vector a
fine-tuned classifier's pooler reads). Per model and pooling:

- ``cosine``: mean cosine similarity of two different rows' features (1: every row points the same
  way, a collapsed or strongly anisotropic representation);
- ``effective_rank``: participation ratio (sum of eigenvalues)^2 / (sum of squares) of the centred
  features' covariance, between 1 (one direction) and the width;
- ``top_pc``: the first principal component's share of the variance;
- ``between_class``: the class means' share of the variance (R^2 of the label; 0 when the classes
  overlap in mean);
- ``norm``: mean feature length;
- ``pc1_gc``: |Pearson r| of the first principal component's scores with each row's GC share (is
  the one direction a collapsed model keeps base composition?);
- ``probe_mcc`` / ``probe_accuracy``: the probe callback's own few-shot linear probe (``--shots``
  per class, ``--draws`` draws, the same fit and metrics), so these numbers are the pretraining
  curves' end points, comparable with random initialisation.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from types import SimpleNamespace

import torch

from gm.data.tasks import TASKS
from gm.data.tokenizer import KmerTokenizer
from gm.models.pretrained import RANDOM_INIT, load_classifier, model_label
from gm.probe import ProbeCallback
from gm.utils import GMError

POOLINGS = ("mean", "cls")
STATISTICS = ("cosine", "effective_rank", "top_pc", "between_class", "norm", "pc1_gc")


def gc_share(sequence: str) -> float:
    seq = sequence.upper()
    return (seq.count("G") + seq.count("C")) / max(1, len(seq))


def _abs_correlation(a: torch.Tensor, b: torch.Tensor) -> float | None:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(a.norm() * b.norm())
    return abs(float(a @ b)) / denominator if denominator > 0 else None  # a constant has no correlation


def feature_statistics(x: torch.Tensor, labels: torch.Tensor, gc: torch.Tensor | None = None) -> dict[str, float | None]:
    """The geometry statistics of one feature matrix (rows = sequences), its rows' labels and GC shares.

    An undefined statistic (no variance at all; no GC shares given) is None, never 0 or 1.
    """
    x = x.double()
    n = x.shape[0]
    if n < 2:
        raise GMError("feature statistics need at least 2 rows")
    unit = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    gram = unit @ unit.T
    cosine = float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))
    centred = x - x.mean(0)
    eigenvalues, vectors = torch.linalg.eigh(centred.T @ centred / n)
    eigenvalues = eigenvalues.clamp(min=0)
    total = float(eigenvalues.sum())
    between = sum(float((labels == c).sum()) * float((x[labels == c].mean(0) - x.mean(0)).square().sum())
                  for c in labels.unique().tolist()) / n
    return {
        "cosine": cosine,
        # a constant feature matrix has no variance: its rank and shares are undefined, not 0 or 1
        "effective_rank": total**2 / float(eigenvalues.square().sum()) if total > 0 else None,
        "top_pc": float(eigenvalues.max()) / total if total > 0 else None,
        "between_class": between / total if total > 0 else None,
        "norm": float(x.norm(dim=1).mean()),
        "pc1_gc": _abs_correlation(centred @ vectors[:, -1], gc.double()) if gc is not None and total > 0 else None,
    }


def _parse_model(text: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named as fine-tuning names it); a pretraining run folder means its ``hf/`` export."""
    name, sep, path = text.partition("=")
    if not (sep and name and not Path(text).exists()):
        name, path = model_label(text), text
    if (Path(path) / "hf").is_dir() and not (Path(path) / "config.json").is_file():
        path = str(Path(path) / "hf")
    return name, path


def measure(models: list[str], task: str, random_init: bool, shots: int, draws: int, rows: int, seed: int) -> list[dict]:
    """One record per (model, pooling): statistics and probe scores on the task's fixed test rows."""
    probe = ProbeCallback(tasks=[task], shots=shots, draws=draws, test_size=rows, seed=seed)
    spec = probe.tasks[0]
    loaded = []
    for text in models:
        name, path = _parse_model(text)
        model, info = load_classifier(path, num_labels=spec.num_classes, dropout=0.0)
        loaded.append((name, model, info.k))
    if random_init:
        if not loaded:
            raise GMError("--random-init takes its architecture from the first model; give at least one")
        torch.manual_seed(seed)
        _, first, k = loaded[0]
        loaded.append((RANDOM_INIT, type(first)(copy.deepcopy(first.config)), k))
    records = []
    for name, model, k in loaded:
        model.eval()
        positions = int(model.config.max_position_embeddings)
        longest = max(len(e.sequence) for e in [*spec.test, *(e for d in spec.draws for e in d)])
        if longest - k + 1 > positions - 2:
            raise GMError(f"{name}: {spec.name}'s sequences are up to {longest} bases = {longest - k + 1} {k}-mers, more than "
                          f"the model's {positions} positions hold; choose another --task")
        holder = SimpleNamespace(model=model, device=torch.device("cpu"), tokenizer=KmerTokenizer(k, positions))
        probe.setup(None, holder, "fit")  # tokenise for this model's k and positions
        labels = torch.as_tensor([e.label for e in spec.test])
        gc = torch.as_tensor([gc_share(e.sequence) for e in spec.test])
        test_rows = torch.as_tensor([spec.row[e.sequence] for e in spec.test])
        for pooling in POOLINGS:
            features = probe.features(spec, holder, pooling)
            record = {"model": name, "task": spec.name, "pooling": pooling, "rows": int(test_rows.numel()),
                      "width": int(features.shape[1])}
            record.update(feature_statistics(features[test_rows], labels, gc))
            scores = probe.fit_and_score(spec, features)
            record["probe_mcc"] = scores.get(f"probe/{spec.name}/mcc")  # absent: undefined in some draw
            record["probe_accuracy"] = scores.get(f"probe/{spec.name}/accuracy")
            records.append(record)
    return records


def to_markdown(records: list[dict]) -> str:
    cell = lambda v: "undefined" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| model | pooling | cosine | effective rank | top PC share | PC1-GC abs r | between-class share | norm | probe MCC | probe accuracy |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        lines.append(f"| {r['model']} | {r['pooling']} | {cell(r['cosine'])} | {cell(r['effective_rank'])} | {cell(r['top_pc'])} | {cell(r['pc1_gc'])} | "
                     f"{cell(r['between_class'])} | {cell(r['norm'])} | {cell(r['probe_mcc'])} | {cell(r['probe_accuracy'])} |")
    first = records[0] if records else {}
    return (f"Frozen features on {first.get('task', '?')}: {first.get('rows', 0)} class-balanced test rows, width "
            f"{first.get('width', 0)}.\n\n" + "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------ CLI
def _at_least(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is below {least}")
        return value
    return parse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("features", help="geometry and linear-probe scores of frozen encoder features on a task's test rows",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", default=[],
                   help="[NAME=]PATH: pretraining run folders (their hf/ export), hf folders or .ckpt files")
    p.add_argument("--random-init", action="store_true", help="add a randomly initialised model of the first model's architecture")
    p.add_argument("--task", default="prom_core", choices=list(TASKS))
    p.add_argument("--rows", type=_at_least(2), default=1000, help="class-balanced test rows (default 1000)")
    p.add_argument("--shots", type=_at_least(1), default=100, help="probe shots per class (default 100)")
    p.add_argument("--draws", type=_at_least(1), default=3, help="probe draws (default 3)")
    p.add_argument("--seed", type=int, default=0, help="test rows, probe shots and random initialisation (default 0)")
    p.add_argument("--out", type=Path, default=None, help="folder for features.md and features.json (default: print only)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """The ``features`` command (errors: :func:`gm.analysis.cli.main`'s one-line boundary)."""
    from gm.analysis.cli import check_output_folder, write_report

    if args.out is not None:
        check_output_folder(args.out)  # before a minute of encoding, not after
    if not args.models:
        raise GMError("give at least one model (a pretraining run folder, hf folder or .ckpt)")
    records = measure(args.models, args.task, args.random_init, args.shots, args.draws, args.rows, args.seed)
    text = to_markdown(records)
    print(text, end="")
    if args.out is not None:
        write_report(args.out, "features", text, records)
    return 0
