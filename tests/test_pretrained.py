"""Classifier initialisation from every kind of source, and the k checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import gm.models.pretrained
from conftest import TINY, compose_train
from gm.models.pretrained import load_classifier
from gm.train import train
from gm.utils import GMError


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory) -> Path:
    """A tiny genemask pretraining run with its checkpoint and Hugging Face export."""
    tmp = tmp_path_factory.mktemp("pretrain")
    cfg = compose_train(tmp, TINY + ["masking=genemask", "export_hf=true", "logger=none", "trainer.max_steps=4"])
    train(cfg)
    return Path(cfg.paths.output_dir)


def encoder_weights(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith("bert.") and "pooler" not in k}


def test_from_checkpoint_carries_the_encoder_and_its_history(pretrained_run):
    model, info = load_classifier(str(pretrained_run / "checkpoints" / "last.ckpt"), num_labels=3)
    assert (info.kind, info.k, info.masking, info.pretrain_steps) == ("checkpoint", 6, "genemask", 4)
    assert model.config.num_labels == 3 and model.config.hidden_dropout_prob == 0.1
    state = torch.load(pretrained_run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight, state["model.bert.embeddings.word_embeddings.weight"])


def test_from_exported_directory_equals_from_checkpoint(pretrained_run):
    from_ckpt, _ = load_classifier(str(pretrained_run / "checkpoints" / "last.ckpt"), num_labels=2)
    from_dir, info = load_classifier(str(pretrained_run / "hf"), num_labels=2)
    assert (info.kind, info.k, info.masking, info.pretrain_steps) == ("huggingface", 6, "genemask", 4)
    a, b = encoder_weights(from_ckpt), encoder_weights(from_dir)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_hub_id_goes_through_the_hub_download(pretrained_run, monkeypatch):
    """The hub path is real code; offline, the download is pointed at a local snapshot."""
    asked = []

    def fake_download(repo_id: str) -> Path:
        asked.append(repo_id)
        return pretrained_run / "hf"

    monkeypatch.setattr(gm.models.pretrained, "download_from_hub", fake_download)
    model, info = load_classifier("zhihan1996/DNA_bert_6", num_labels=2)
    assert asked == ["zhihan1996/DNA_bert_6"]
    assert (info.kind, info.source, info.k) == ("hub", "zhihan1996/DNA_bert_6", 6)


def test_hub_download_failure_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GMError, match="no-such-user/no-such-model.*Hugging Face hub"):
        load_classifier("no-such-user/no-such-model", num_labels=2)


def test_random_initialisation_uses_the_model_config():
    model, info = load_classifier(None, num_labels=2, encoder={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64})
    assert (info.kind, info.k, info.pretrain_steps) == ("none", 6, 0)
    assert model.config.hidden_size == 32 and model.config.vocab_size == 4101
    model4, info4 = load_classifier(None, num_labels=2, k=4, encoder={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64})
    assert info4.k == 4 and model4.config.vocab_size == 4**4 + 5


def test_k_comes_from_the_model_and_a_mismatch_is_an_error(pretrained_run, tmp_path):
    with pytest.raises(GMError, match="k=4 was asked for.*6-mers"):
        load_classifier(str(pretrained_run / "checkpoints" / "last.ckpt"), num_labels=2, k=4)
    with pytest.raises(GMError, match="k=5 was asked for"):
        load_classifier(str(pretrained_run / "hf"), num_labels=2, k=5)
    # a directory whose vocabulary and embeddings disagree
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        (broken / name).write_bytes((pretrained_run / "hf" / name).read_bytes())
    config = json.loads((broken / "config.json").read_text())
    config["vocab_size"] = 4**5 + 5
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(GMError, match="vocab.txt holds 6-mers but the model's embeddings are for 5-mers"):
        load_classifier(str(broken), num_labels=2)


def test_missing_sources_are_clear_errors(tmp_path):
    with pytest.raises(GMError, match="no such checkpoint"):
        load_classifier(str(tmp_path / "missing.ckpt"), num_labels=2)
    not_ckpt = tmp_path / "model.ckpt"
    torch.save({"weights": 1}, not_ckpt)
    with pytest.raises(GMError, match="not a train.py checkpoint"):
        load_classifier(str(not_ckpt), num_labels=2)
    with pytest.raises(GMError, match="no config.json"):
        load_classifier(str(tmp_path), num_labels=2)


def copy_export(pretrained_run: Path, to: Path) -> Path:
    to.mkdir()
    for file in (pretrained_run / "hf").iterdir():
        (to / file.name).write_bytes(file.read_bytes())
    return to


def test_every_source_fine_tunes_in_training_mode_with_dropout(pretrained_run):
    """from_pretrained returns eval mode, which Lightning keeps: fine-tuning would run without dropout."""
    sources = [str(pretrained_run / "checkpoints" / "last.ckpt"), str(pretrained_run / "hf"), None]
    for source in sources:
        model, _ = load_classifier(source, num_labels=2, dropout=0.2,
                                   encoder={"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64})
        assert all(module.training for module in model.modules()), source
        assert model.config.hidden_dropout_prob == 0.2 and model.config.attention_probs_dropout_prob == 0.2


def test_loading_says_what_was_expected_and_warns_only_about_the_rest(pretrained_run, tmp_path, caplog):
    caplog.set_level("INFO", logger="gm.models.pretrained")
    load_classifier(str(pretrained_run / "hf"), num_labels=2)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    (line,) = [r.getMessage() for r in caplog.records if "MLM head" in r.getMessage()]
    assert "is dropped" in line and "classifier" in line and "newly initialised" in line
    from safetensors.torch import load_file, save_file

    weights = load_file(pretrained_run / "hf" / "model.safetensors")
    extra = copy_export(pretrained_run, tmp_path / "extra")
    old_buffer = {"bert.embeddings.position_ids": torch.arange(66)[None]}  # saved by older transformers: no warning
    save_file({**weights, **old_buffer, "something.else": torch.zeros(2)}, extra / "model.safetensors")
    caplog.clear()
    load_classifier(str(extra), num_labels=2)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{extra}: 1 unexpected tensor(s) ignored: something.else"]
    missing = copy_export(pretrained_run, tmp_path / "missing")
    save_file({k: v for k, v in weights.items() if "layer.0.output.dense" not in k}, missing / "model.safetensors")
    with pytest.raises(GMError, match=r"missing: 2 encoder weight\(s\) missing from the file \(bert\.encoder\.layer\.0\.output\.dense"):
        load_classifier(str(missing), num_labels=2)


def test_bpe_tokenisers_are_not_supported(tmp_path):
    bpe = tmp_path / "dnabert2"
    bpe.mkdir()
    (bpe / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 4096, "hidden_size": 32}))
    (bpe / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {
        "type": "BPE", "vocab": {"[UNK]": 0, "A": 1, "C": 2, "G": 3, "T": 4, "AC": 5}, "merges": ["A C"]}}))
    with pytest.raises(GMError, match=r"tokenizer\.json: a BPE tokeniser \(DNABERT-2, Nucleotide Transformer.*only DNABERT k-mer"):
        load_classifier(str(bpe), num_labels=2)
    (bpe / "tokenizer.json").unlink()  # the same vocabulary saved as a vocab.txt
    (bpe / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "A", "C", "G", "T", "AC", "TATA"]) + "\n")
    with pytest.raises(GMError, match=r"vocab\.txt: tokens of 1 to 4 letters, a subword \(BPE\) vocabulary.*only DNABERT k-mer"):
        load_classifier(str(bpe), num_labels=2)


def test_damaged_files_are_one_clear_error(pretrained_run, tmp_path):
    data = (pretrained_run / "checkpoints" / "last.ckpt").read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(bytes(range(7, 256)) * 40)  # a pickle opcode stream of garbage
    for path in (truncated, noise):
        with pytest.raises(GMError, match=rf"{path.name}: cannot read the checkpoint, the file is damaged or incomplete"):
            load_classifier(str(path), num_labels=2)
    folder = copy_export(pretrained_run, tmp_path / "hf")
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(GMError, match=r"model\.safetensors: cannot read the weights, the file is damaged or incomplete"):
        load_classifier(str(folder), num_labels=2)
