"""Figures (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gm.masking import (
    BertMasking,
    GeneMaskMasking,
    RandomSpanMasking,
    dilate,
    kmer_span_offsets,
)
from gm.utils import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 150) -> Path:
    """Save atomically (PNG bytes rendered in memory, then renamed into place)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def plot_masks(input_ids: torch.Tensor, out: str | Path, seed: int = 3, p_center: float = 0.045, title: str = "") -> Path:
    """One sequence masked by each strategy, from the same mask centres where strategies share them.

    Rows: BERT (independent tokens), DNABERT's k-mer spans, GeneMask ranked by token NPMI (the
    paper), GeneMask ranked by position (the released code), and the random-span control. Blue is
    a centre's k-span, orange the extra (2k-1)-span of a high-set centre; dots mark centres and
    triangles the best k-mer that anchors a long span. Centres are drawn more densely than in
    training (``p_center``) so that one short sequence shows several.
    """
    plt = _pyplot()
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
        ("genemask: position-ranked (released code)", GeneMaskMasking(rank_by="position")),
        ("random_span: random long spans (control)", RandomSpanMasking()),
    ]
    for label, strategy in strategies:
        masked, high, best = strategy.plan(ids, valid, centres, torch.Generator().manual_seed(seed))
        state = np.where(kspan[0].numpy(), 1, np.where(masked[0].numpy(), 2, 0))
        anchors = np.zeros(ids.shape[1], dtype=bool)
        anchors[best[0][high[0]].numpy()] = True
        rows.append((label, state, centres[0].numpy(), anchors))

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
    axes[-1].set_yticks([0], ["NPMI rank of each 6-mer (dark = high NPMI)"])
    axes[-1].set_xlabel("token position ([CLS] = 0)")
    fig.suptitle(title or "masking strategies on one sequence", fontsize=10)
    fig.text(
        0.01, -0.04,
        "blue: k-span of a centre (dots)   orange: (2k-1)-span around the best k-mer (triangles) of a high-set centre   "
        f"centres drawn with p={p_center} for legibility",
        fontsize=7,
    )
    path = save_figure(fig, out)
    plt.close(fig)
    return path
