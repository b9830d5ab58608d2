"""``python analyze.py masks``: one real sequence masked by every strategy, as a figure."""

from __future__ import annotations

from pathlib import Path

from gm.analysis.cli import SAMPLE_FASTA
from gm.utils import GMError


def masks(out: Path, fasta: Path = SAMPLE_FASTA, start: int = 1_000_000, n_kmers: int = 96, seed: int = 3) -> Path:
    """Draw one real sequence masked by every strategy, spans coloured, as a PNG (the README's figure:
    ``python analyze.py masks --out docs/figures/masks.png``)."""
    from gm.analysis.plots import check_figure_path, plot_masks
    from gm.data.fasta import read_fasta
    from gm.data.tokenizer import CODE_TO_BYTE, KmerTokenizer

    check_figure_path(out)
    tokenizer = KmerTokenizer(6)
    codes = next(iter(read_fasta(fasta, progress=False))).codes
    window = codes[start : start + n_kmers + 5]
    if (window == 4).any():
        raise GMError(f"{fasta}: the window at {start} contains N; choose another --start")
    sequence = CODE_TO_BYTE[window].tobytes().decode()
    path = plot_masks(tokenizer.encode(sequence).input_ids, out, seed=seed, title=f"chr2:{start + 1:,}-{start + len(sequence):,}")
    print(f"wrote {path}")
    return path
