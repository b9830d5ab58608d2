"""The paper's four few-shot tasks (spec §5): their folders, classes, shipped shot files and test sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from gm.utils import GMError

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "fewshot"


# ------------------------------------------------------------------------------------------ tasks
@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task; file paths are relative to the few-shot data directory."""

    name: str
    folder: str
    num_classes: int
    bases: int  # nominal sequence length
    shot_files: dict[int, str]  # shots per class -> shipped training file
    test_file: str | None = None
    extra_files: tuple[str, ...] = ()  # more labelled rows for the pool (Splice-40's dev set)
    test_per_class: int | None = None  # size of the carved test set when no test file is shipped

    @property
    def label_names(self) -> list[str]:
        return [str(i) for i in range(self.num_classes)]

    @property
    def train_files(self) -> list[str]:
        return [self.shot_files[n] for n in sorted(self.shot_files)] + list(self.extra_files)


def _shots(folder: str, counts: Sequence[int], scale: int = 1) -> dict[int, str]:
    return {n * scale: f"{folder}/{n}/train.tsv.gz" for n in counts}


#: The paper's four tasks. Carved test sizes: Prom-300's union holds 1,626 / 1,634 distinct
#: sequences per class, so 500 per class leaves 1,126 for its largest file (1,000 shots).
#: Cohn-enh's holds 653 / 647 (a few rows repeat across its files), so 147 per class is the
#: largest test set that still leaves the 500 shots of its largest file (150 would leave 497).
TASKS: dict[str, TaskSpec] = {
    "prom_core": TaskSpec("prom_core", "Prom-core", 2, 70, _shots("Prom-core", (10, 50, 100, 500, 1000)),
                          test_file="Prom-core/test.tsv.gz"),
    "prom_300": TaskSpec("prom_300", "Prom-300", 2, 300, _shots("Prom-300", (10, 50, 100, 500, 1000)),
                         test_per_class=500),
    "cohn_enh": TaskSpec("cohn_enh", "Cohn-enh", 2, 500, _shots("Cohn-enh", (10, 50, 100, 500)),
                         test_per_class=147),
    # Splice-40's folder N holds 10*N sequences per class.
    "splice_40": TaskSpec("splice_40", "Splice-40", 3, 40, _shots("Splice-40", (10, 50, 100, 500), scale=10),
                          test_file="Splice-40/test.tsv.gz", extra_files=("Splice-40/dev.tsv.gz",)),
}


def get_task(task: str | TaskSpec) -> TaskSpec:
    """A task by key or folder name, in any case (``prom_core``, ``Prom-core``)."""
    if isinstance(task, TaskSpec):
        return task
    key = str(task).strip().lower().replace("-", "_")
    if key not in TASKS:
        raise GMError(f"unknown few-shot task {task!r}: choose one of {', '.join(TASKS)} or custom")
    return TASKS[key]
