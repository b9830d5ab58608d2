"""Few-shot data: shipped tasks and their split policy (spec §5), custom files, bad input, batches."""

from __future__ import annotations

import gzip
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from gm.data.fewshot import FewShotDataModule
from gm.data.labelled import Example, _read_cached, read_examples
from gm.data.splits import ShotsUnavailableError, make_split
from gm.data.tasks import DEFAULT_DATA_DIR, TASKS
from gm.data.tokenizer import PAD_ID, KmerTokenizer, kmer_text_to_sequence
from gm.utils import GMError

SHIPPED_SHOTS = [(name, n) for name, spec in TASKS.items() for n in sorted(spec.shot_files)]
RNG_BASES = np.array(list("ACGT"))


def kmers(seq: str, k: int = 6) -> str:
    return " ".join(seq[i : i + k] for i in range(len(seq) - k + 1))


def random_seq(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(RNG_BASES, n))


def sequences(examples: list[Example]) -> set[str]:
    return {e.sequence for e in examples}


def write(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


# ------------------------------------------------------------------------------------------ shipped tasks
@pytest.mark.parametrize("task,shots", SHIPPED_SHOTS)
def test_every_shipped_shot_count(task: str, shots: int) -> None:
    spec = TASKS[task]
    split = make_split(task, shots, seed=0)
    assert split.class_counts("train") == [shots] * spec.num_classes
    assert split.num_classes == spec.num_classes and split.label_names == [str(c) for c in range(spec.num_classes)]
    assert {len(e.sequence) for e in split.train + split.test} == {spec.bases}  # the nominal length in bases
    if spec.test_file:
        assert (split.train_source, split.test_source) == ("shipped", "shipped")
        rows, _ = read_examples(DEFAULT_DATA_DIR / spec.shot_files[shots], label_names=spec.label_names)
        assert [e.sequence for e in split.train] == [e.sequence for e in rows]  # the paper's file, exactly
        test = sequences(split.test)
        assert split.train_test_overlap == sum(e.sequence in test for e in split.train)
    else:
        assert (split.train_source, split.test_source) == ("resampled", "carved")
        assert split.train_test_overlap == 0
        assert "carved" in split.note


def test_splice_folders_hold_ten_times_their_name() -> None:
    assert TASKS["splice_40"].shot_files == {100: "Splice-40/10/train.tsv.gz", 500: "Splice-40/50/train.tsv.gz",
                                             1000: "Splice-40/100/train.tsv.gz", 5000: "Splice-40/500/train.tsv.gz"}
    for shots in (100, 500, 1000):
        assert make_split("splice_40", shots, 0).class_counts() == [shots] * 3


def test_shipped_test_sets_and_reported_overlap() -> None:
    core = make_split("Prom-core", 1000, 0)  # folder names work too
    splice = make_split("splice_40", 1000, 0)
    assert len(core.test) == 5920 and len(splice.test) == 3000
    assert core.class_counts("test") == [2926, 2994]
    # the paper's files share a handful of sequences with the test set: reported, kept
    assert core.train_test_overlap == 1 and splice.train_test_overlap == 3
    assert "also in the test set" in core.note


def test_kmer_files_decode_to_their_raw_sequence() -> None:
    path = DEFAULT_DATA_DIR / "Prom-core/test.tsv.gz"
    examples, names = read_examples(path, label_names=["0", "1"])
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()[1:]
    assert names == ["0", "1"]
    assert [e.sequence for e in examples[:50]] == [kmer_text_to_sequence(line.split("\t")[0]) for line in lines[:50]]
    assert examples[0].source.endswith("test.tsv.gz:2")


# ------------------------------------------------------------------------------------------ resampling
@pytest.mark.parametrize("task,shots,resample", [("prom_core", 10, True), ("splice_40", 10, False), ("splice_40", 50, False)])
def test_resampled_shots(task: str, shots: int, resample: bool) -> None:
    splits = [make_split(task, shots, seed, resample=resample) for seed in (0, 1, 2)]
    for split in splits:
        assert split.train_source == "resampled" and split.test_source == "shipped"
        assert split.class_counts() == [shots] * TASKS[task].num_classes
        assert not sequences(split.train) & sequences(split.test) and split.train_test_overlap == 0
        assert len(sequences(split.train)) == len(split.train)  # de-duplicated pool
    assert len({tuple(e.sequence for e in s.train) for s in splits}) == 3  # the seed matters
    again = make_split(task, shots, 1, resample=resample)
    assert again.train == splits[1].train and again.test == splits[1].test  # and nothing else does
    bigger = make_split(task, 5 * shots, 1, resample=True)
    assert sequences(splits[1].train) <= sequences(bigger.train)  # nested draws


@pytest.mark.parametrize("task", ["prom_300", "cohn_enh"])
def test_carved_test_set_is_fixed_balanced_and_disjoint(task: str) -> None:
    spec = TASKS[task]
    reference = make_split(task, 10, seed=0).test
    assert Counter(e.label for e in reference) == {c: spec.test_per_class for c in range(2)}
    assert len(sequences(reference)) == len(reference)
    for shots in sorted(spec.shot_files):
        for seed in (0, 3):
            split = make_split(task, shots, seed)
            assert split.test == reference  # depends on carve_seed only
            assert split.class_counts() == [shots, shots]
            assert not sequences(split.train) & sequences(split.test)
    assert make_split(task, 10, 0, carve_seed=1).test != reference
    assert make_split(task, 10, 0).train != make_split(task, 10, 1).train


def test_too_many_shots_says_what_is_available() -> None:
    with pytest.raises(ShotsUnavailableError, match=r"only 500 per class are available") as err:
        make_split("cohn_enh", 1000, 0)
    assert err.value.available == 500 and isinstance(err.value, GMError)
    with pytest.raises(GMError, match=r"only 1628 per class are available"):
        make_split("prom_core", 2000, 0)
    with pytest.raises(GMError, match=r"only 1126 per class"):
        make_split("prom_300", 1500, 0)


def test_val_fraction_is_stratified_and_disjoint() -> None:
    full = make_split("splice_40", 100, 0)
    split = make_split("splice_40", 100, 0, val_fraction=0.2)
    assert split.class_counts("val") == [20, 20, 20] and split.class_counts("train") == [80, 80, 80]
    assert not {e.source for e in split.train} & {e.source for e in split.val}
    assert sorted(e.source for e in split.train + split.val) == sorted(e.source for e in full.train)
    assert split.test == full.test
    assert make_split("splice_40", 100, 0, val_fraction=0.2).val == split.val
    assert make_split("splice_40", 100, 1, val_fraction=0.2).val != split.val
    assert make_split("prom_core", 10, 0, val_fraction=0.01).class_counts("val") == [1, 1]  # never silently empty
    with pytest.raises(GMError, match="val_fraction"):
        make_split("prom_core", 10, 0, val_fraction=1.0)


def test_unknown_task_and_bad_arguments() -> None:
    with pytest.raises(GMError, match="unknown few-shot task 'prom_900'.*prom_core"):
        make_split("prom_900", 10, 0)
    with pytest.raises(GMError, match="shots"):
        make_split("prom_core", 0, 0)
    with pytest.raises(GMError, match="seeds"):
        make_split("prom_core", 10, -1, resample=True)


# ------------------------------------------------------------------------------------------ custom files
@pytest.mark.parametrize("fmt", ["tsv", "csv.gz", "csv_quoted", "tsv_quoted.gz", "txt"])
def test_custom_files_load(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    rows = [(random_seq(rng, int(rng.integers(30, 60))), ["enhancer", "other"][i % 2]) for i in range(60)]
    delim = "\t" if fmt.startswith(("tsv", "txt")) else ","
    quote = '"' if "quoted" in fmt else ""
    lines = [f"{quote}seq{quote}{delim}{quote}class{quote}{delim}extra"]
    for i, (seq, label) in enumerate(rows):
        text = kmers(seq) if i % 3 else seq.lower() if i % 2 else seq  # k-mer text, lower and upper raw bases
        lines.append(f"{quote}{text}{quote}{delim}{quote}{label}{quote}{delim}x")
    ext = {"tsv_quoted.gz": "tsv.gz", "csv_quoted": "csv"}.get(fmt, fmt)
    path = write(tmp_path / f"data.{ext}", "\n".join(lines) + "\n")
    examples, names = read_examples(path, "seq", "class")
    assert names == ["enhancer", "other"]
    assert [(e.sequence, names[e.label]) for e in examples] == rows
    assert examples[4].source == f"{path}:6"

    custom = {"train": path, "sequence_column": "seq", "label_column": "class", "test_per_class": 10}
    split = make_split("custom", 5, 0, custom=custom)
    assert split.test_source == "carved" and split.class_counts("test") == [10, 10] and split.class_counts() == [5, 5]
    assert not sequences(split.train) & sequences(split.test)
    with pytest.raises(ShotsUnavailableError, match="only 20 per class"):
        make_split("custom", 21, 0, custom=custom)
    default = make_split("custom", 5, 0, custom={**custom, "test_per_class": None})
    assert default.class_counts("test") == [6, 6]  # CUSTOM_TEST_FRACTION of the 30 per class


def test_custom_train_and_test_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    seqs = [random_seq(rng, 40) for _ in range(40)]
    train = write(tmp_path / "train.tsv", "sequence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(seqs[:30])))
    test = write(tmp_path / "test.csv", "sequence,label\n" + "".join(f"{kmers(s)},{i % 2}\n" for i, s in enumerate(seqs[28:])))
    split = make_split("mine", 10, 0, custom={"train": train, "test": test})
    assert split.task == "mine" and split.test_source == "given" and split.train_source == "resampled"
    assert len(split.test) == 12 and split.class_counts() == [10, 10]
    assert not sequences(split.train) & sequences(split.test)  # seqs 28, 29 are in both files: never drawn
    with pytest.raises(GMError, match="only 14 per class"):
        make_split("mine", 15, 0, custom={"train": train, "test": test})
    bad = write(tmp_path / "bad_test.tsv", f"sequence\tlabel\n{seqs[0]}\t0\n{seqs[1]}\t7\n")
    with pytest.raises(GMError, match=r"bad_test\.tsv:3: label '7' is not one of 0, 1"):
        make_split("mine", 10, 0, custom={"train": train, "test": bad})


@pytest.mark.parametrize(
    "body,message",
    [
        ("ACGTACGTAC\t0\nACGTXCGTAC\t1\n", r"bad\.tsv:3: character 'X'"),
        ("ACGTAC CGTACG\t0\nACGTAC GTACGT\t1\n", r"bad\.tsv:3: k-mers do not overlap"),
        ("ACGTAC CGTACG GTACGT\t0\nACGTAC CGTACG TAC\t1\n", r"bad\.tsv:3: k-mer 3 'TAC' has 3 letters"),
        ("ACGTACGT\t0\nACGTACGT\n", r"bad\.tsv:3: 1 field"),
        ("ACGTACGT\t0\n\t1\n", r"bad\.tsv:3: empty sequence"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path / "bad.tsv", "sequence\tlabel\n" + body)
    with pytest.raises(GMError, match=message):
        read_examples(path)


def test_missing_column_and_unknown_label(tmp_path: Path) -> None:
    path = write(tmp_path / "cols.csv", '"seq","y"\nACGTACGT,0\n')
    with pytest.raises(GMError, match=r"cols\.csv: no column 'sequence' \(columns found: 'seq', 'y'\)"):
        read_examples(path)
    with pytest.raises(GMError, match="no such|cannot read"):
        read_examples(tmp_path / "absent.tsv")
    # an unknown label in a shipped task's file (3 in a binary task)
    data = tmp_path / "fewshot"
    shutil.copytree(DEFAULT_DATA_DIR / "Prom-core", data / "Prom-core")
    shot = data / "Prom-core/10/train.tsv.gz"
    lines = gzip.decompress(shot.read_bytes()).decode().splitlines()
    lines[4] = lines[4].rsplit("\t", 1)[0] + '\t"3"'
    write(shot, "\n".join(lines) + "\n")
    with pytest.raises(GMError, match=r"Prom-core/10/train\.tsv\.gz:5: label '3' is not one of 0, 1"):
        make_split("prom_core", 10, 0, data_dir=data)


# ------------------------------------------------------------------------------------------ batches
def test_datamodule_batches() -> None:
    dm = FewShotDataModule("splice_40", shots=100, seed=0, batch_size=16, eval_batch_size=128, val_fraction=0.1)
    assert dm.num_classes == 3  # known before setup for shipped tasks
    dm.setup("fit")
    assert dm.split is not None and dm.label_names == ["0", "1", "2"] and dm.task_name == "splice_40"
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "index"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (16, 40 - 6 + 1 + 2)
    assert batch["labels"].shape == batch["index"].shape == (16,)
    tokenizer = KmerTokenizer(6, 512)
    expected = tokenizer.encode([dm.split.train[i].sequence for i in batch["index"].tolist()])
    assert torch.equal(batch["input_ids"], expected.input_ids)
    assert batch["labels"].tolist() == [dm.split.train[i].label for i in batch["index"].tolist()]
    order = lambda: torch.cat([b["index"] for b in dm.train_dataloader()]).tolist()  # noqa: E731
    first = order()
    assert sorted(first) == list(range(len(dm.split.train))) and first != sorted(first)
    again = FewShotDataModule("splice_40", shots=100, seed=0, batch_size=16, val_fraction=0.1)
    again.setup()
    assert torch.cat([b["index"] for b in again.train_dataloader()]).tolist() == first  # seeded shuffle
    val = list(dm.val_dataloader())
    assert sum(len(b["index"]) for b in val) == len(dm.split.val) == 30
    assert FewShotDataModule("prom_core", 10, 0).val_dataloader() == []  # no validation split


def test_eval_batches_sorted_by_length_and_restorable(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    seqs = [random_seq(rng, int(n)) for n in rng.integers(10, 120, 90)]
    train = write(tmp_path / "train.tsv", "sequence\tlabel\n" + "".join(f"{s}\t{'ab'[i % 2]}\n" for i, s in enumerate(seqs[:40])))
    test = write(tmp_path / "test.tsv", "sequence\tlabel\n" + "".join(f"{s}\t{'ab'[i % 2]}\n" for i, s in enumerate(seqs[40:])))
    dm = FewShotDataModule("custom", shots=5, seed=0, eval_batch_size=8, custom_train=train, custom_test=test)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    lengths = torch.cat([b["attention_mask"].sum(1) for b in batches])
    assert torch.all(lengths[:-1] >= lengths[1:])  # longest first
    for b in batches:  # padding only up to each batch's longest row
        assert b["attention_mask"][:, -1].any() and (b["input_ids"][b["attention_mask"] == 0] == PAD_ID).all()
    index = torch.cat([b["index"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    restored = torch.empty_like(labels)
    restored[index] = labels
    assert restored.tolist() == [e.label for e in dm.split.test] == [i % 2 for i in range(50)]
    assert dm.label_names == ["a", "b"]


def test_too_long_for_max_length() -> None:
    dm = FewShotDataModule("cohn_enh", 10, 0, max_length=256)
    with pytest.raises(GMError, match=r"cohn_enh: .* 500 bases = 495 6-mers, more than the 254"):
        dm.setup()


def test_prom_core_test_set_is_fast() -> None:
    _read_cached.cache_clear()
    started = time.perf_counter()
    dm = FewShotDataModule("prom_core", 10, 0)
    dm.setup()
    assert len(dm.split.test) == 5920
    assert time.perf_counter() - started < 2.0


# ------------------------------------------------------------------------------------------ per-class files
def fasta(records: list[str], width: int = 25) -> str:
    return "".join(f">seq{i} some description\n" + "".join(s[j : j + width] + "\n" for j in range(0, len(s), width))
                   for i, s in enumerate(records))


def test_per_class_fasta_and_plain_files(tmp_path: Path) -> None:
    import hashlib

    rng = np.random.default_rng(2)
    tata = [random_seq(rng, 60) for _ in range(30)]
    other = [random_seq(rng, 60) for _ in range(30)]
    a = write(tmp_path / "tata.fa.gz", fasta(tata))  # records over several lines, gzipped
    b = write(tmp_path / "nontata.txt", "\n".join(s.lower() if i % 2 else kmers(s) for i, s in enumerate(other)) + "\n\n")
    split = make_split("custom", 5, 0, custom={"train": {"promoter": a, "other": b}, "test_per_class": 5})
    assert split.task == "tata+nontata" and split.label_names == ["promoter", "other"]
    assert split.class_counts() == [5, 5] and split.class_counts("test") == [5, 5] and split.test_source == "carved"
    assert {e.sequence for e in split.train + split.test if e.label == 0} <= set(tata)
    assert {e.sequence for e in split.train + split.test if e.label == 1} <= set(other)
    assert [(f["role"], f["label"], f["sha256"]) for f in split.files] == [
        ("train", "promoter", hashlib.sha256(a.read_bytes()).hexdigest()),
        ("train", "other", hashlib.sha256(b.read_bytes()).hexdigest())]
    # a list: labels from the file names; a test slot of per-class files
    c = write(tmp_path / "test_tata.fa", fasta([random_seq(rng, 60) for _ in range(4)]))
    d = write(tmp_path / "test_other.fa", fasta([random_seq(rng, 60) for _ in range(3)]))
    listed = make_split(None, 5, 0, custom={"train": [a, b], "test": {"nontata": d, "tata": c}})
    assert listed.label_names == ["tata", "nontata"] and listed.test_source == "given"
    assert listed.class_counts("test") == [4, 3] and listed.class_counts() == [5, 5]
    with pytest.raises(GMError, match="test file for label 'enhancer': not one of the training labels tata, nontata"):
        make_split(None, 5, 0, custom={"train": [a, b], "test": {"enhancer": d, "tata": c}})
    # the data hash follows the content, not the path
    moved = write(tmp_path / "elsewhere.fa.gz", fasta(tata))
    again = make_split("custom", 5, 0, custom={"train": {"promoter": moved, "other": b}, "test_per_class": 5})
    assert again.data_sha256 == split.data_sha256
    swapped = make_split("custom", 5, 0, custom={"train": {"promoter": b, "other": a}, "test_per_class": 5})
    assert swapped.data_sha256 != split.data_sha256


def test_shipped_tasks_record_the_files_they_read() -> None:
    import hashlib

    split = make_split("prom_core", 10, 0)
    assert [(f["role"], f["path"]) for f in split.files] == [
        ("train", str(DEFAULT_DATA_DIR / "Prom-core/10/train.tsv.gz")), ("test", str(DEFAULT_DATA_DIR / "Prom-core/test.tsv.gz"))]
    assert split.files[1]["sha256"] == hashlib.sha256((DEFAULT_DATA_DIR / "Prom-core/test.tsv.gz").read_bytes()).hexdigest()
    assert make_split("prom_core", 10, 1).data_sha256 == split.data_sha256  # same files, another draw of nothing
    resampled = make_split("prom_core", 10, 0, resample=True)
    assert [f["role"] for f in resampled.files] == ["train"] * 5 + ["test"] and resampled.data_sha256 != split.data_sha256


def test_sequence_files_in_the_wrong_slot_say_what_is_supported(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    fa = write(tmp_path / "seqs.fa", fasta([random_seq(rng, 40) for _ in range(4)]))
    lines = write(tmp_path / "tata.txt", "".join(random_seq(rng, 300) + "\n" for _ in range(4)))
    table = write(tmp_path / "table.tsv", "sequence\tlabel\n" + "".join(f"{random_seq(rng, 40)}\t{i % 2}\n" for i in range(6)))
    for path, kind in ((fa, "a FASTA file"), (lines, "a headerless one-sequence-per-line file")):
        with pytest.raises(GMError, match=rf"{path.name}: {kind} has no labels, .* one such file per class instead"):
            make_split("custom", 1, 0, custom={"train": path})
    with pytest.raises(GMError, match=r"table\.tsv:1: a table, but a per-class file holds FASTA records or one sequence per line"):
        make_split("custom", 1, 0, custom={"train": {"a": table, "b": fa}})
    with pytest.raises(GMError, match="label 'seqs' names two files"):
        make_split("custom", 1, 0, custom={"train": [fa, fa]})
    with pytest.raises(GMError, match=r"seqs\.fa: only one label found \('seqs'\)"):
        make_split("custom", 1, 0, custom={"train": [fa]})
    bad = write(tmp_path / "bad.fa", ">one\nACGTACGTAC\n>two\nACGTXCGTAC\n")
    with pytest.raises(GMError, match=r"bad\.fa:3: character 'X'"):
        make_split("custom", 1, 0, custom={"train": {"a": bad, "b": fa}})
