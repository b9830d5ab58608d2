"""Few-shot splits (spec §5): the training shots, validation rows and test set of one run.

Split policy (one rule for every task, custom ones included):

- Task with a test set: the training shots are the shipped file for that shot count (the paper's
  exact split, its few train/test duplicates reported in ``train_test_overlap``, never dropped),
  or, when there is none or ``resample=True``, ``shots`` per class drawn with ``seed`` from the
  union of the task's training files, de-duplicated, minus every test sequence.
- Task without a test set (Prom-300, Cohn-enh): a class-balanced test set is carved with
  ``carve_seed`` alone (never the run seed or the shot count, so every run of a sweep is scored
  on the same rows) from the de-duplicated union of all shipped files; the shots are always drawn
  from the rest, so no sequence is in both.
- A shot count the data cannot supply is an error (:class:`ShotsUnavailableError`), never a
  silent shrink. Draws are nested: for one seed the 10-shot sample is part of the 50-shot one.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from gm.data.labelled import Example, _file_record, read_examples, read_sequences
from gm.data.tasks import DEFAULT_DATA_DIR, TaskSpec, get_task
from gm.utils import GMError

#: Carved test size of custom data without a test file when test_per_class is not given:
#: this share of the smallest class's distinct sequences, per class.
CUSTOM_TEST_FRACTION = 0.2
# Independent random streams: the same seed must not couple the carve, the draw and the val split.
_CARVE_STREAM, _DRAW_STREAM, _VAL_STREAM = 1, 2, 3


class ShotsUnavailableError(GMError):
    """The data cannot supply the requested shots per class (sweeps may skip such jobs)."""

    def __init__(self, message: str, available: int) -> None:
        super().__init__(message)
        self.available = available


# ------------------------------------------------------------------------------------------ splits
@dataclass
class FewShotSplit:
    """Train / validation / test examples of one run, with where they came from."""

    task: str
    shots: int  # n: training examples per class asked for (before any move to val)
    seed: int
    train: list[Example]
    val: list[Example]
    test: list[Example]
    label_names: list[str]
    test_source: str  # "shipped" or "carved"
    train_source: str  # "shipped" or "resampled"
    train_test_overlap: int  # training sequences also in the test set (the shipped files have a few)
    note: str = ""
    pool_size: dict[int, int] = field(default_factory=dict)  # distinct sequences per class the shots could come from
    files: list[dict[str, Any]] = field(default_factory=list)  # every file read: role, path, label, sha256

    @property
    def data_sha256(self) -> str:
        """One hash of the data the run saw (roles, labels and content of its files, not their paths)."""
        parts = sorted(f"{f['role']}:{f.get('label', '')}:{f['sha256']}" for f in self.files)
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def class_counts(self, part: str = "train") -> list[int]:
        """Examples per class in ``train``, ``val`` or ``test``."""
        counts = Counter(e.label for e in getattr(self, part))
        return [counts.get(c, 0) for c in range(self.num_classes)]


def _rng(seed: int, stream: int) -> np.random.Generator:
    if int(seed) < 0:
        raise GMError(f"seeds must be non-negative integers, got {seed}")
    return np.random.default_rng([int(seed), stream])


def _dedupe(examples: list[Example]) -> tuple[list[Example], int]:
    """Distinct sequences (first occurrence kept), sorted by (label, sequence) so file order never matters.

    A sequence seen with two labels is ambiguous and dropped. Returns (pool, number dropped so).
    """
    labels: dict[str, set[int]] = {}
    first: dict[str, Example] = {}
    for e in examples:
        labels.setdefault(e.sequence, set()).add(e.label)
        first.setdefault(e.sequence, e)
    conflicts = {s for s, ls in labels.items() if len(ls) > 1}
    pool = sorted((e for s, e in first.items() if s not in conflicts), key=lambda e: (e.label, e.sequence))
    return pool, len(conflicts)


def _by_class(pool: list[Example], num_classes: int) -> list[list[Example]]:
    groups: list[list[Example]] = [[] for _ in range(num_classes)]
    for e in pool:
        groups[e.label].append(e)
    return groups


def _draw(pool: list[Example], per_class: int, num_classes: int, rng: np.random.Generator, what: str,
          label_names: Sequence[str]) -> tuple[list[Example], list[Example]]:
    """``per_class`` examples of each class (a seeded permutation's prefix, hence nested) and the rest."""
    groups = _by_class(pool, num_classes)
    sizes = [len(g) for g in groups]
    if min(sizes) < per_class:
        detail = ", ".join(f"class {name}: {n}" for name, n in zip(label_names, sizes))
        raise ShotsUnavailableError(f"{what}: {per_class} per class asked, but only {min(sizes)} per class are "
                                    f"available ({detail})", available=min(sizes))
    taken: list[Example] = []
    rest: list[Example] = []
    for group in groups:
        order = rng.permutation(len(group))
        taken.extend(group[i] for i in order[:per_class])
        rest.extend(group[i] for i in np.sort(order[per_class:]))
    return taken, rest


def _split_val(train: list[Example], fraction: float, num_classes: int, rng: np.random.Generator
               ) -> tuple[list[Example], list[Example]]:
    """Move ``fraction`` of each class to validation (at least one when fraction > 0, never all)."""
    if fraction == 0:
        return train, []
    kept: list[Example] = []
    val: list[Example] = []
    for c, group in enumerate(_by_class(train, num_classes)):
        n_val = max(1, int(round(fraction * len(group)))) if group else 0
        if group and n_val >= len(group):
            raise GMError(f"val_fraction={fraction} of the {len(group)} training examples of class {c} "
                          "leaves none for training")
        moved = set(rng.permutation(len(group))[:n_val].tolist())
        for i, e in enumerate(group):
            (val if i in moved else kept).append(e)
    return kept, val


def _read_many(paths: list[Path], **kwargs: Any) -> list[Example]:
    return [e for p in paths for e in read_examples(p, **kwargs)[0]]


def make_split(
    task: str | TaskSpec | None,
    shots: int,
    seed: int,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    resample: bool = False,
    val_fraction: float = 0.0,
    carve_seed: int = 0,
    custom: Mapping[str, Any] | None = None,
) -> FewShotSplit:
    """The train/val/test split of one run (spec §5; policy in the module docstring).

    ``custom`` = {"train", "test" (or None), "sequence_column", "label_column", "test_per_class",
    "label_names"} uses the user's files instead of a shipped task (see :func:`_custom_task` for
    the forms a file slot takes); there are no shot files, so the shots are always drawn; the test
    set is carved from the training data when no test file is given (``test_per_class`` per class;
    default ``CUSTOM_TEST_FRACTION`` of the smallest class). ``task`` names a custom task (None or
    ``custom``: derived from the training file names). Same arguments, same split.
    """
    shots = int(shots)
    if shots < 1:
        raise GMError(f"shots must be a positive number of examples per class, got {shots}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise GMError(f"val_fraction must be in [0, 1), got {val_fraction}")
    data_dir = Path(data_dir)
    if custom is not None:
        spec, label_names, pool_examples, test, files = _custom_task(task, custom)
        train_files = [f for f in files if f["role"] == "train"]
        test_files = [f for f in files if f["role"] == "test"]
        read_pool = lambda: pool_examples  # noqa: E731
        test_name = ", ".join(Path(f["path"]).name for f in test_files)
    else:
        spec = get_task(task)
        label_names = spec.label_names
        train_paths = [data_dir / f for f in spec.train_files]
        read_pool = lambda: _read_many(train_paths, label_names=label_names)  # noqa: E731
        train_files = [_file_record("train", path) for path in train_paths]
        test_files = [_file_record("test", data_dir / spec.test_file)] if spec.test_file else []
        test = read_examples(data_dir / spec.test_file, label_names=label_names)[0] if spec.test_file else None
        test_name = Path(spec.test_file).name if spec.test_file else ""
    name = spec.name

    if test is not None:
        _check_test_classes(test, label_names, test_name)
        test_sequences = {e.sequence for e in test}
        shipped = spec.shot_files.get(shots)
        if shipped is not None and not resample:
            train, _ = read_examples(data_dir / shipped, label_names=label_names)
            train_files = [_file_record("train", data_dir / shipped)]
            train_source, pool_size = "shipped", {}
            origin = f"from the shipped file {shipped}"
        else:
            pool, conflicts = _dedupe(read_pool())
            pool = [e for e in pool if e.sequence not in test_sequences]
            pool_size = dict(enumerate(len(g) for g in _by_class(pool, len(label_names))))
            train, _ = _draw(pool, shots, len(label_names), _rng(seed, _DRAW_STREAM),
                             f"{name} {shots} shots", label_names)
            train_source = "resampled"
            origin = (f"drawn with seed {seed} from {sum(pool_size.values())} distinct training sequences "
                      f"not in the test set" + (f" ({conflicts} with conflicting labels dropped)" if conflicts else ""))
        test_source = "given" if custom is not None else "shipped"
        test_note = f"{'the test file' if custom is not None else 'shipped test set'} {test_name} ({len(test)} rows)"
    else:
        pool, conflicts = _dedupe(read_pool())
        per_class = spec.test_per_class
        if per_class is None:  # custom data: a share of the smallest class, so most rows stay for shots
            per_class = max(1, int(CUSTOM_TEST_FRACTION * min(len(g) for g in _by_class(pool, len(label_names)))))
        if int(per_class) < 1:
            raise GMError(f"{name}: test_per_class must be a positive count, got {per_class}")
        test, rest = _draw(pool, int(per_class), len(label_names), _rng(carve_seed, _CARVE_STREAM),
                           f"{name} carved test set", label_names)
        test_sequences = {e.sequence for e in test}
        pool_size = dict(enumerate(len(g) for g in _by_class(rest, len(label_names))))
        train, _ = _draw(rest, shots, len(label_names), _rng(seed, _DRAW_STREAM),
                         f"{name} {shots} shots (after carving a test set of {per_class} per class)", label_names)
        train_source, test_source = "resampled", "carved"
        origin = f"drawn with seed {seed} from the {len(rest)} sequences left"
        test_note = (f"no test set is shipped: a fixed test set of {per_class} per class was carved (carve_seed "
                     f"{carve_seed}) from the {len(pool)} distinct sequences of "
                     + ("the training data" if custom is not None else "the shipped files; not the paper's test set"))
        if conflicts:
            test_note += f" ({conflicts} sequences with conflicting labels dropped)"

    overlap = sum(e.sequence in test_sequences for e in train)
    train, val = _split_val(train, float(val_fraction), len(label_names), _rng(seed, _VAL_STREAM))
    note = f"{name}, {shots} shots per class {origin}; {test_note}"
    if overlap:
        note += f"; {overlap} training sequence(s) also in the test set (kept: the shipped split is used as is)"
    if val:
        note += f"; {len(val)} training examples moved to validation"
    return FewShotSplit(name, shots, int(seed), train, val, test, list(label_names), test_source, train_source,
                        overlap, note, pool_size, train_files + test_files)


def _check_test_classes(test: list[Example], label_names: Sequence[str], where: str) -> None:
    """A test set must hold every class: on one lacking some, MCC, macro-F1 and AUROC mean nothing."""
    counts = Counter(e.label for e in test)
    absent = [name for i, name in enumerate(label_names) if not counts.get(i)]
    if absent:
        found = ", ".join(f"{label_names[i]!r} ({n} rows)" for i, n in sorted(counts.items()))
        raise GMError(f"{where}: the test set holds only {found}; class(es) {', '.join(map(repr, absent))} of the "
                      "training data are absent, so MCC, F1 and AUROC would be undefined: give a test set with every class")


def _custom_slot(value: Any, what: str) -> list[tuple[str | None, Path]]:
    """A file slot of custom data as (label, path) pairs: one table (label None), or one file per class.

    Per-class files come as a mapping ``{label: file}`` or a list of files whose names (up to the
    first dot) are the labels.
    """
    if hasattr(value, "items"):  # dict or OmegaConf DictConfig
        pairs = [(str(label), Path(str(path))) for label, path in value.items()]
    elif isinstance(value, (str, os.PathLike)):
        return [(None, Path(str(value)))]
    else:
        pairs = [(Path(str(path)).name.split(".")[0], Path(str(path))) for path in value]
    labels = [label for label, _ in pairs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise GMError(f"{what}: label {repeated[0]!r} names two files; give one file per class, "
                      f"e.g. {what}='{{label_a: a.fa, label_b: b.fa}}'")
    return pairs


def _read_slot(pairs: list[tuple[str | None, Path]], role: str, read_kwargs: dict[str, Any],
               label_names: list[str] | None) -> tuple[list[Example], list[str], list[dict[str, Any]]]:
    """The examples, label names and file records of one slot (train or test)."""
    if pairs[0][0] is None:
        examples, names = read_examples(pairs[0][1], **read_kwargs, label_names=label_names)
        return examples, names, [_file_record(role, pairs[0][1])]
    names = label_names if label_names is not None else [label for label, _ in pairs]
    unknown = [label for label, _ in pairs if label not in names]
    if unknown:
        raise GMError(f"{role} file for label {unknown[0]!r}: not one of the training labels {', '.join(names)}")
    examples = [e for label, path in pairs for e in read_sequences(path, names.index(label))]
    return examples, names, [_file_record(role, path, label) for label, path in pairs]


def _custom_task(
    task: str | TaskSpec | None, custom: Mapping[str, Any]
) -> tuple[TaskSpec, list[str], list[Example], list[Example] | None, list[dict[str, Any]]]:
    """The TaskSpec, label names, training examples, test examples (None: carve) and file records of
    a user's data. Label names come from the training data (or ``label_names``)."""
    if not custom.get("train"):
        raise GMError("a custom few-shot task needs data.custom_train: a .tsv/.csv table with a header, or one "
                      "FASTA or one-sequence-per-line file per class ('{label_a: a.fa, label_b: b.fa}')")
    read_kwargs: dict[str, Any] = {
        "sequence_column": str(custom.get("sequence_column") or "sequence"),
        "label_column": str(custom.get("label_column") or "label"),
    }
    given = custom.get("label_names")
    train_pairs = _custom_slot(custom["train"], "data.custom_train")
    train, label_names, files = _read_slot(train_pairs, "train", read_kwargs, list(map(str, given)) if given else None)
    if len(label_names) < 2:
        where = ", ".join(str(path) for _, path in train_pairs)
        raise GMError(f"{where}: only one label found ({label_names[0] if label_names else 'none'!r}); a classifier "
                      "needs at least two classes")
    test = None
    if custom.get("test"):
        test, _, test_files = _read_slot(_custom_slot(custom["test"], "data.custom_test"), "test", read_kwargs, label_names)
        files += test_files
    if isinstance(task, TaskSpec):
        name = task.name
    elif task not in (None, "", "custom"):
        name = str(task)
    else:  # derived from the training data: the table's name, or the per-class files' names
        name = "+".join(path.name.split(".")[0] for _, path in train_pairs)
    per_class = custom.get("test_per_class")
    spec = TaskSpec(name, train_pairs[0][1].parent.name, len(label_names), 0, {}, test_file=None,
                    test_per_class=int(per_class) if per_class is not None else None)
    return spec, label_names, train, test, files
