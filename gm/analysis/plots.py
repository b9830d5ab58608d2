"""Figures (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gm.masking.strategies import (
    BertMasking,
    GeneMaskMasking,
    GlobalPMIMasking,
    RandomSpanMasking,
    dilate,
    kmer_span_offsets,
)
from gm.utils import GMError, atomic_write_bytes


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (figures are files, never windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_figure_path(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, a figure path that cannot be written: a folder, a path under a
    file, or a suffix matplotlib has no format for (the format follows the suffix; none = PNG)."""
    from gm.utils import check_output_path

    path = check_output_path(path, option)
    suffix = path.suffix.lstrip(".").lower()
    if suffix:
        from matplotlib.backend_bases import FigureCanvasBase

        formats = FigureCanvasBase.get_supported_filetypes()
        if suffix not in formats:
            raise GMError(f"{option} {path}: matplotlib cannot write .{suffix} figures; use one of "
                          + ", ".join(f".{f}" for f in sorted(formats)))
    return path


def save_figure(fig, path: str | Path, dpi: int = 150) -> Path:
    """Save atomically (PNG bytes rendered in memory, then renamed into place)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def plot_masks(input_ids: torch.Tensor, out: str | Path, seed: int = 3, p_center: float = 0.045, title: str = "") -> Path:
    """One sequence masked by each strategy, from the same mask centres where strategies share them.

    Rows: BERT (independent tokens), DNABERT's k-mer spans, GeneMask ranked by token NPMI (the
    paper), GeneMask ranked by position (the released code), the random-span control, and
    Global-PMI (as many (2k-1)-spans as centres, around the best-NPMI k-mers; the centres themselves
    are not masked). Blue is a centre's k-span, orange a (2k-1)-span; dots mark centres and
    triangles the k-mer that anchors a long span. Centres are drawn more densely than in
    training (``p_center``) so that one short sequence shows several.
    """
    plt = pyplot()
    from matplotlib.colors import ListedColormap

    ids = input_ids[:1]
    valid = ids >= 5
    k = 6
    centres = valid & (torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed)) < p_center)
    kspan = dilate(centres, kmer_span_offsets(k)) & valid
    rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    none = np.zeros(ids.shape[1], dtype=bool)
    bert = BertMasking().select(ids, valid, torch.Generator().manual_seed(seed))[0].numpy()
    rows.append(("bert: tokens, p=0.15", bert.astype(int), none, none))
    rows.append(("kmer_span (DNABERT): k-span per centre", kspan[0].numpy().astype(int), centres[0].numpy(), none))
    strategies = [
        ("genemask: token NPMI (paper)", GeneMaskMasking()),
        ("genemask_position: ranked by position (released lookup)", GeneMaskMasking(rank_by="position")),
        ("random_span: random long spans (control)", RandomSpanMasking()),
    ]
    for label, strategy in strategies:
        masked, high, best = strategy.plan(ids, valid, centres, torch.Generator().manual_seed(seed))
        state = np.where(kspan[0].numpy(), 1, np.where(masked[0].numpy(), 2, 0))
        anchors = np.zeros(ids.shape[1], dtype=bool)
        anchors[best[0][high[0]].numpy()] = True
        rows.append((label, state, centres[0].numpy(), anchors))
    masked, chosen = GlobalPMIMasking().plan(ids, valid, centres)
    rows.append(("global_pmi: as many long spans, best NPMI", np.where(masked[0].numpy(), 2, 0), none, chosen[0].numpy()))

    length = ids.shape[1]
    fig, axes = plt.subplots(len(rows) + 1, 1, figsize=(14, 0.55 * (len(rows) + 1) + 1.2), sharex=True)
    cmap = ListedColormap(["#e6e6e6", "#4c72b0", "#dd8452"])
    for ax, (label, state, centre_marks, anchor_marks) in zip(axes, rows):
        ax.imshow(state[None, :], cmap=cmap, vmin=0, vmax=2, aspect="auto", interpolation="nearest")
        xs = np.flatnonzero(centre_marks)
        ax.scatter(xs, np.zeros_like(xs), s=12, c="black", zorder=3)
        xs = np.flatnonzero(anchor_marks)
        ax.scatter(xs, np.zeros_like(xs), s=30, marker="v", c="#c44e52", zorder=4)
        ax.set_yticks([0], [label])
        masked_share = (state > 0)[valid[0].numpy()].mean()
        ax.text(length - 0.5, 0, f" {masked_share:.0%}", va="center", ha="left", fontsize=8)
    ranks = GeneMaskMasking().rank_table[ids[0]].numpy().astype(float)
    ranks[~valid[0].numpy()] = np.nan
    axes[-1].imshow(ranks[None, :], cmap="viridis_r", aspect="auto", interpolation="nearest", vmin=1, vmax=4096)
    axes[-1].set_yticks([0], ["NPMI rank of each 6-mer (bright = high NPMI, rank 1)"])
    axes[-1].set_xlabel("token position ([CLS] = 0)")
    fig.suptitle(title or "masking strategies on one sequence", fontsize=10)
    fig.text(
        0.01, -0.04,
        "blue: k-span of a centre (dots)   orange: (2k-1)-span around the best k-mer (triangles) of a high-set centre "
        "(global_pmi: of a chosen k-mer)   "
        f"centres drawn with p={p_center} for legibility",
        fontsize=7,
    )
    path = save_figure(fig, out)
    plt.close(fig)
    return path


def plot_results(rows, metric: str, out: str | Path, title: str = "") -> Path | None:
    """Few-shot results for one metric: a subplot per task, ``metric`` against shots (log x).

    ``rows`` are :class:`gm.analysis.results.ResultRow` (anything with ``task``, ``shots``, ``model``,
    ``test_source``, ``n_classes``, ``mean`` and ``std``), in the order the tasks should appear. One
    line per pretrained model, in the same colour in every subplot, with error bars of one standard
    deviation over seeds (none for a single seed), nudged sideways so that the bars do not hide
    each other. A dotted grey line marks chance (:func:`gm.analysis.results.chance_level`) where it is
    known. Subplot titles mark carved (or mixed) test sets. Tasks for which the metric is undefined
    (AUROC of a 3-class task) get no panel, only a note; if no task has a value, nothing is written
    and None is returned.
    """
    from gm.analysis.results import chance_level

    plt = pyplot()
    from matplotlib.ticker import NullFormatter

    rows = list(rows)
    if not rows:
        raise ValueError("no results to plot")
    every_task = list(dict.fromkeys(row.task for row in rows))
    tasks = [t for t in every_task if any(np.isfinite(row.mean[metric]) for row in rows if row.task == t)]
    if not tasks:
        return None
    undefined = [t for t in every_task if t not in tasks]
    rows = [row for row in rows if row.task in tasks]
    models = list(dict.fromkeys(row.model for row in rows if np.isfinite(row.mean[metric])))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ncols = 1 if len(tasks) == 1 else 2 if len(tasks) <= 4 else 3
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    handles = {}
    no_chance = []  # tasks whose chance level for this metric is not known
    for ax, task in zip(axes.flat, tasks):
        task_rows = [row for row in rows if row.task == task]
        sources = {row.test_source for row in task_rows}
        note = " (carved test set)" if sources == {"carved"} else " (mixed/carved test sets)" if sources - {"shipped", "given"} else ""
        ax.set_title(task + note, fontsize=10)
        shots = sorted({row.shots for row in task_rows})
        for index, model in enumerate(models):
            points = sorted((row.shots, row.mean[metric], row.std[metric]) for row in task_rows if row.model == model)
            points = [p for p in points if np.isfinite(p[1])]
            if not points:
                continue
            nudge = 10 ** (0.025 * (index - (len(models) - 1) / 2))
            x = np.array([p[0] for p in points], dtype=float) * nudge
            y = np.array([p[1] for p in points])
            err = np.nan_to_num(np.array([p[2] for p in points]), nan=0.0)
            handle = ax.errorbar(x, y, yerr=err, marker="o", markersize=4, capsize=3, linewidth=1.4,
                                 color=colours[index % len(colours)], label=model)
            handles.setdefault(model, handle)
        chance = chance_level(metric, task_rows)
        if chance is not None:
            line = ax.axhline(chance, color="grey", linestyle=":", linewidth=1.4, zorder=1)
            handles.setdefault("chance (random guessing)", line)
        else:
            no_chance.append(task)
        ax.set_xscale("log")
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("shots per class")
        ax.set_ylabel(metric)
        ax.grid(True, which="major", alpha=0.3)
        ax.set_xlim(shots[0] / 1.4, shots[-1] * 1.4)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 4) or 1,
               fontsize=9, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title or f"{metric}: mean ± std over seeds", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    notes = []
    if undefined:
        why = " (AUROC is reported for two-class tasks only)" if metric == "auroc" else ""
        notes.append(f"{metric} is undefined for {', '.join(undefined)}{why}: not shown")
    if no_chance:
        notes.append(f"no chance line for {', '.join(no_chance)}: 1/classes holds only on a class-balanced test set, "
                     "and its class counts are not recorded")
    for i, note in enumerate(notes):
        fig.text(0.5, -0.05 - 0.035 * i, note, ha="center", fontsize=8, color="grey")
    path = save_figure(fig, out)
    plt.close(fig)
    return path
