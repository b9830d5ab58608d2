"""Where a fine-tuned classifier's encoder comes from.

``pretrained`` may be a ``train.py`` checkpoint (``.ckpt``), a Hugging Face model directory (one
exported by this project, or DNABERT's), a Hugging Face hub id such as ``zhihan1996/DNA_bert_6``
(downloaded once into the Hugging Face cache), or ``None``: random initialisation, the
no-pretraining baseline. The tokenizer's k always comes from the model; asking for another k is
an error, because the embeddings are indexed by DNABERT's k-mer ids. :func:`model_label` is the name
a ``pretrained`` value is reported under (fine-tuning runs and the results tables).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification

from gm.data.tokenizer import NUM_SPECIAL, KmerTokenizer
from gm.models.mlm import PRETRAINING_META, build_bert_config
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


def _classifier(config: BertConfig, num_labels: int, dropout: float | None) -> BertForSequenceClassification:
    """A freshly initialised classifier, in training mode (dropout on).

    Every source builds its model here and then loads the encoder's weights, so a ``.ckpt`` and
    its exported ``hf/`` folder give the same model and leave the random stream in the same state.
    ``from_pretrained`` is not used: it returns the model in eval mode, which Lightning keeps, so
    fine-tuning would run without dropout.
    """
    config.num_labels = num_labels
    _fine_tuning_dropout(config, dropout)
    return BertForSequenceClassification(config).train()


def _load_encoder(model: BertForSequenceClassification, state: dict[str, torch.Tensor], where: str) -> None:
    """Load the encoder tensors of a pretraining state dict (``bert.*``); the MLM head is dropped.

    What is expected (the MLM head ``cls.*`` left out, the classifier and any pooler the
    checkpoint lacks newly initialised) is one log line; a missing encoder weight or a tensor of
    the wrong shape is an error, any other unexpected tensor a warning.
    """
    encoder, head, other = {}, [], []
    for key, value in state.items():
        key = key.replace(".gamma", ".weight").replace(".beta", ".bias")  # TF-era LayerNorm names
        if key.startswith(("embeddings.", "encoder.", "pooler.")):
            key = f"bert.{key}"  # a bare BertModel's keys
        if key.startswith("bert."):
            encoder[key] = value
        elif key.startswith("cls."):
            head.append(key)
        else:
            other.append(key)
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(expected[k].shape)})" for k, v in encoder.items()
             if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise GMError(f"{where}: encoder weights do not fit the model: {wrong[0]}" + (f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""))
    missing, unexpected = model.load_state_dict(encoder, strict=False)
    new = [key for key in missing if key.startswith(("classifier.", "bert.pooler."))]
    missing = [key for key in missing if key not in new]
    if missing:
        raise GMError(f"{where}: {len(missing)} encoder weight(s) missing from the file ({', '.join(missing[:3])}"
                      f"{', ...' if len(missing) > 3 else ''}): not a complete BERT encoder")
    # position_ids/token_type_ids: buffers older transformers saved (DNABERT's files), rebuilt by the model
    unexpected = [key for key in unexpected + other if not key.endswith(("position_ids", "token_type_ids"))]
    if unexpected:
        log.warning("%s: %d unexpected tensor(s) ignored: %s%s", where, len(unexpected), ", ".join(unexpected[:5]),
                    ", ..." if len(unexpected) > 5 else "")
    fresh = "the classifier" + (" and pooler are" if any(key.startswith("bert.pooler.") for key in new) else " is")
    log.info("%s: loaded %d encoder tensors; as expected, the MLM head (%d tensors) is dropped and %s newly initialised",
             where, len(encoder), len(head), fresh)


def from_checkpoint(path: Path, num_labels: int, k: int | None, dropout: float | None) -> tuple[BertForSequenceClassification, PretrainedInfo]:
    """A classifier whose encoder is the BERT of a ``train.py`` checkpoint."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 (EOFError, UnpicklingError, zip errors: all a damaged file)
        raise GMError(f"{path}: cannot read the checkpoint, the file is damaged or incomplete "
                      f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'})") from None
    if not isinstance(checkpoint, dict):
        raise GMError(f"{path}: not a train.py checkpoint (holds a {type(checkpoint).__name__})")
    hparams = checkpoint.get("hyper_parameters", {})
    if "encoder" not in hparams or "state_dict" not in checkpoint:
        raise GMError(f"{path}: not a train.py checkpoint (no encoder hyper-parameters or state_dict)")
    model_k = _check_k(k, int(hparams.get("k", 6)), str(path))
    model = _classifier(build_bert_config(model_k, **hparams["encoder"]), num_labels, dropout)
    prefix = "model."
    _load_encoder(model, {key[len(prefix):]: value for key, value in checkpoint["state_dict"].items() if key.startswith(prefix)}, str(path))
    info = PretrainedInfo(
        str(path), "checkpoint", model_k, hparams.get("masking_name"), int(checkpoint.get("global_step", 0)), dict(hparams["encoder"])
    )
    return model, info


#: weight files of a Hugging Face directory, in the order transformers prefers them
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face directory's weights (one file or shards); a damaged file is a GMError."""
    from safetensors.torch import load_file

    found = next((directory / name for name in _WEIGHT_FILES if (directory / name).is_file()), None)
    if found is None:
        raise GMError(f"{directory}: no weights ({' or '.join(_WEIGHT_FILES[::2])})")
    files = [found]
    if found.name.endswith(".index.json"):
        files = [directory / name for name in dict.fromkeys(_read_json(found).get("weight_map", {}).values())]
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            if file.suffix == ".safetensors":
                state.update(load_file(file))
            else:
                state.update(torch.load(file, map_location="cpu", weights_only=True))
        except Exception as err:  # noqa: BLE001 (truncated, corrupt or missing shard: all a damaged file)
            raise GMError(f"{file}: cannot read the weights, the file is damaged or incomplete "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'})") from None
    return state


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GMError(f"{path}: cannot read ({err})") from None
    if not isinstance(data, dict):
        raise GMError(f"{path}: expected a JSON object")
    return data


def _check_tokenizer(directory: Path) -> None:
    """Only DNABERT's k-mer vocabularies are supported: say so for BPE/Unigram tokenisers (DNABERT-2, ...)."""
    tokenizer_json = directory / "tokenizer.json"
    kind = _read_json(tokenizer_json).get("model", {}).get("type") if tokenizer_json.is_file() else None
    unsupported = "this release supports only DNABERT k-mer vocabularies (vocab.txt of 4^k + 5 tokens, k = 3..6)"
    if kind in ("BPE", "Unigram"):
        raise GMError(f"{tokenizer_json}: a {kind} tokeniser (DNABERT-2, Nucleotide Transformer and the like); {unsupported}")
    vocab = directory / "vocab.txt"
    lengths = {len(token) for token in vocab.read_text(errors="replace").split()[NUM_SPECIAL:]} if vocab.is_file() else set()
    if len(lengths) > 1:  # k-mers all have k letters; subword pieces do not
        raise GMError(f"{vocab}: tokens of {min(lengths)} to {max(lengths)} letters, a subword (BPE) vocabulary as "
                      f"DNABERT-2's; {unsupported}")


def from_huggingface(directory: Path, num_labels: int, k: int | None, dropout: float | None, source: str | None = None, kind: str = "huggingface") -> tuple[BertForSequenceClassification, PretrainedInfo]:
    """A classifier from a Hugging Face BERT directory with a DNABERT ``vocab.txt``."""
    if not (directory / "config.json").is_file():
        raise GMError(f"{directory}: no config.json (not a Hugging Face model directory)")
    _check_tokenizer(directory)
    config = _read_json(directory / "config.json")
    if config.get("model_type", "bert") != "bert":
        raise GMError(f"{directory / 'config.json'}: model_type {config['model_type']!r}; this release fine-tunes BERT encoders only")
    vocab_k = KmerTokenizer.from_pretrained(directory).k
    model_k = _k_from_vocab_size(int(config.get("vocab_size", 0)), str(directory / "config.json"))
    if model_k != vocab_k:
        raise GMError(f"{directory}: vocab.txt holds {vocab_k}-mers but the model's embeddings are for {model_k}-mers")
    _check_k(k, model_k, str(source or directory))
    bert_config = BertConfig.from_dict({**config, "attn_implementation": "sdpa"})
    model = _classifier(bert_config, num_labels, dropout)
    _load_encoder(model, _read_weights(directory), str(directory))
    meta_path = directory / PRETRAINING_META
    meta = _read_json(meta_path) if meta_path.is_file() else {}
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
        return _classifier(build_bert_config(model_k, **sizes), num_labels, dropout), PretrainedInfo(None, "none", model_k, None, 0, sizes)
    path = Path(str(pretrained)).expanduser()
    if path.is_file():
        return from_checkpoint(path, num_labels, k, dropout)
    if path.is_dir():
        return from_huggingface(path, num_labels, k, dropout)
    if str(pretrained).startswith((".", "/", "~")) or str(pretrained).endswith(".ckpt"):
        raise GMError(f"pretrained={pretrained}: no such checkpoint or directory")
    return from_huggingface(download_from_hub(str(pretrained)), num_labels, k, dropout, source=str(pretrained), kind="hub")


# ------------------------------------------------------------------------------------------ naming
#: the label of a randomly initialised model (``pretrained=null``)
RANDOM_INIT = "random init"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
#: folders inside a pretraining run that hold a model; the label is the run folder's name
_MODEL_DIRS = ("hf", "checkpoints", "model")


def model_label(pretrained: str | None) -> str:
    """A display label for a ``pretrained`` value that comes without ``pretrained_name``.

    ``None`` is ``"random init"``; a hub id (``owner/name``, not on disk) is itself; a pretraining
    run's export or checkpoint folder (``<run>/hf``, ``<run>/checkpoints``) is the run folder's name;
    a checkpoint file is ``<run>/<file stem>`` (``<file stem>`` outside a ``checkpoints`` folder);
    any other folder is its name. A run folder named by a bare number (a multirun job) keeps its
    parent's name in front: ``2024-05-01_12-00-00/3``.
    """
    if pretrained is None:
        return RANDOM_INIT
    text = pretrained.strip().rstrip("/\\") or pretrained
    path = Path(text).expanduser()
    if _HUB_ID.match(text) and not path.exists() and not text.startswith("."):
        return text
    if path.suffix in _CHECKPOINT_SUFFIXES or path.is_file():
        if path.parent.name == "checkpoints":
            return f"{_run_name(path.parent.parent)}/{path.stem}"
        return path.stem
    if path.name in _MODEL_DIRS and path.parent.name:
        return _run_name(path.parent)
    return path.name or text


def _run_name(run: Path) -> str:
    if run.name.isdigit() and run.parent.name:
        return f"{run.parent.name}/{run.name}"
    return run.name or str(run)
