"""Where a fine-tuned classifier's encoder comes from.

``pretrained`` may be a ``train.py`` checkpoint (``.ckpt``), a Hugging Face model directory (one
exported by this project, or DNABERT's), a Hugging Face hub id such as ``zhihan1996/DNA_bert_6``
(downloaded once into the Hugging Face cache), or ``None``: random initialisation, the
no-pretraining baseline. The tokenizer's k always comes from the model; asking for another k is
an error, because the embeddings are indexed by DNABERT's k-mer ids.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import BertForSequenceClassification

from gm.mlm import PRETRAINING_META, build_bert_config
from gm.tokenizer import NUM_SPECIAL, KmerTokenizer
from gm.utils import GMError

log = logging.getLogger(__name__)


@dataclass
class PretrainedInfo:
    """What is known about the encoder a classifier starts from (recorded in ``results.json``)."""

    source: str | None
    kind: str  # "checkpoint" | "huggingface" | "hub" | "none"
    k: int
    masking: str | None = None
    pretrain_steps: int | None = None
    encoder: dict[str, Any] = field(default_factory=dict)


def _k_from_vocab_size(vocab_size: int, where: str) -> int:
    for k in range(3, 7):
        if 4**k + NUM_SPECIAL == vocab_size:
            return k
    raise GMError(f"{where}: vocabulary of {vocab_size} tokens is not a DNABERT k-mer vocabulary (4^k + 5, k = 3..6)")


def _check_k(requested: int | None, actual: int, where: str) -> int:
    if requested is not None and int(requested) != actual:
        raise GMError(f"k={requested} was asked for, but {where} was pretrained on {actual}-mers; drop k or set k={actual}")
    return actual


def _fine_tuning_dropout(config, dropout: float | None) -> None:
    if dropout is not None:
        config.hidden_dropout_prob = dropout
        config.attention_probs_dropout_prob = dropout
        config.classifier_dropout = dropout


def from_checkpoint(path: Path, num_labels: int, k: int | None, dropout: float | None) -> tuple[BertForSequenceClassification, PretrainedInfo]:
    """A classifier whose encoder is the BERT of a ``train.py`` checkpoint."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    hparams = checkpoint.get("hyper_parameters", {})
    if "encoder" not in hparams or "state_dict" not in checkpoint:
        raise GMError(f"{path}: not a train.py checkpoint (no encoder hyper-parameters or state_dict)")
    model_k = _check_k(k, int(hparams.get("k", 6)), str(path))
    config = build_bert_config(model_k, **hparams["encoder"])
    config.num_labels = num_labels
    _fine_tuning_dropout(config, dropout)
    model = BertForSequenceClassification(config)
    prefix = "model.bert."
    encoder_state = {f"bert.{key[len(prefix):]}": value for key, value in checkpoint["state_dict"].items() if key.startswith(prefix)}
    missing, unexpected = model.load_state_dict(encoder_state, strict=False)
    missing = [key for key in missing if not key.startswith(("classifier.", "bert.pooler."))]
    if missing or unexpected:
        raise GMError(f"{path}: encoder weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    info = PretrainedInfo(
        str(path), "checkpoint", model_k, hparams.get("masking_name"), int(checkpoint.get("global_step", 0)), dict(hparams["encoder"])
    )
    return model, info


def from_huggingface(directory: Path, num_labels: int, k: int | None, dropout: float | None, source: str | None = None, kind: str = "huggingface") -> tuple[BertForSequenceClassification, PretrainedInfo]:
    """A classifier from a Hugging Face BERT directory with a DNABERT ``vocab.txt``."""
    if not (directory / "config.json").is_file():
        raise GMError(f"{directory}: no config.json (not a Hugging Face model directory)")
    vocab_k = KmerTokenizer.from_pretrained(directory).k
    config = json.loads((directory / "config.json").read_text())
    model_k = _k_from_vocab_size(int(config.get("vocab_size", 0)), str(directory / "config.json"))
    if model_k != vocab_k:
        raise GMError(f"{directory}: vocab.txt holds {vocab_k}-mers but the model's embeddings are for {model_k}-mers")
    _check_k(k, model_k, str(source or directory))
    overrides = {}
    if dropout is not None:
        overrides = dict(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, classifier_dropout=dropout)
    model = BertForSequenceClassification.from_pretrained(directory, num_labels=num_labels, local_files_only=True, **overrides)
    meta_path = directory / PRETRAINING_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    encoder = {key: config[key] for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size") if key in config}
    return model, PretrainedInfo(str(source or directory), kind, model_k, meta.get("masking"), meta.get("pretrain_steps"), encoder)


def download_from_hub(repo_id: str) -> Path:
    """The local snapshot of a hub model (config, weights, vocab), downloaded once."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.bin"]))
    except Exception as err:  # noqa: BLE001 (offline, unknown repo, no permission: all the same to the user)
        raise GMError(f"pretrained={repo_id!r} is neither a local checkpoint nor a directory, and fetching it from the Hugging Face hub failed: {err}") from err


def load_classifier(
    pretrained: str | None,
    num_labels: int,
    *,
    k: int | None = None,
    encoder: dict[str, Any] | None = None,
    dropout: float | None = 0.1,
) -> tuple[BertForSequenceClassification, PretrainedInfo]:
    """A ``BertForSequenceClassification`` with ``num_labels`` outputs and what it was built from.

    ``encoder`` (BERT sizes, ``conf/model``) is only used for random initialisation.
    """
    if pretrained in (None, "", "null", "none"):
        model_k = int(k or 6)
        sizes = dict(encoder or {})
        config = build_bert_config(model_k, **sizes)
        config.num_labels = num_labels
        _fine_tuning_dropout(config, dropout)
        return BertForSequenceClassification(config), PretrainedInfo(None, "none", model_k, None, 0, sizes)
    path = Path(str(pretrained)).expanduser()
    if path.is_file():
        return from_checkpoint(path, num_labels, k, dropout)
    if path.is_dir():
        return from_huggingface(path, num_labels, k, dropout)
    if str(pretrained).startswith((".", "/", "~")) or str(pretrained).endswith(".ckpt"):
        raise GMError(f"pretrained={pretrained}: no such checkpoint or directory")
    return from_huggingface(download_from_hub(str(pretrained)), num_labels, k, dropout, source=str(pretrained), kind="hub")
