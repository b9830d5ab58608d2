"""A checkpoint and Hugging Face folder written before the package was split into sub-packages still work.

``tests/fixtures/pre_layout_tiny.ckpt`` and ``pre_layout_tiny_hf/`` were made by
``tests/fixtures/make_pre_layout_tiny.py`` with the flat ``gm/`` (old module paths such as
``gm.masking.KmerSpanMasking`` are stored in the checkpoint); ``pre_layout_tiny.json`` holds what
their weights gave then on fixed inputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import BertForMaskedLM

from conftest import TINY, compose_train, random_genome, write_fasta
from gm.models.mlm import build_bert_config
from gm.models.pretrained import load_classifier
from gm.train import train

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CKPT, HF = FIXTURES / "pre_layout_tiny.ckpt", FIXTURES / "pre_layout_tiny_hf"
REFERENCE = json.loads((FIXTURES / "pre_layout_tiny.json").read_text())
INPUT_IDS = torch.tensor([[2, 10, 57, 200, 33, 91, 5, 140, 260, 77, 3]])
LABEL_POSITIONS = [2, 4, 7]
SEED = 1234
#: the overrides the fixture was trained with (tests/fixtures/make_pre_layout_tiny.py)
OVERRIDES = TINY + ["k=4", "masking=kmer_span", "logger=none", "trainer.val_check_interval=2",
                    "callbacks.model_checkpoint.every_n_train_steps=2"]


def close(a, b) -> None:
    torch.testing.assert_close(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_old_checkpoint_loads_and_its_encoder_gives_the_same_mlm_outputs():
    checkpoint = torch.load(CKPT, map_location="cpu", weights_only=False)  # every pickled class still resolves
    hp = checkpoint["hyper_parameters"]
    mlm = BertForMaskedLM(build_bert_config(int(hp["k"]), **hp["encoder"])).eval()
    mlm.load_state_dict({k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")})
    labels = torch.full_like(INPUT_IDS, -100)
    labels[0, LABEL_POSITIONS] = INPUT_IDS[0, LABEL_POSITIONS]
    with torch.no_grad():
        out = mlm(input_ids=INPUT_IDS, attention_mask=torch.ones_like(INPUT_IDS), labels=labels)
    close(float(out.loss), REFERENCE["mlm_loss"])
    close(out.logits[0, 1, :5].tolist(), REFERENCE["mlm_logits_first"])
    close(float(out.logits.double().sum()), REFERENCE["mlm_logits_sum"])


@pytest.mark.parametrize("source", ["ckpt", "hf"])
def test_old_checkpoint_and_export_give_the_same_classifier(source):
    torch.manual_seed(SEED)
    model, info = load_classifier(str(CKPT if source == "ckpt" else HF), num_labels=2)
    assert (info.k, info.masking, info.pretrain_steps) == (4, "kmer_span", 2)
    with torch.no_grad():
        logits = model.eval()(input_ids=INPUT_IDS, attention_mask=torch.ones_like(INPUT_IDS)).logits[0].tolist()
    close(logits, REFERENCE[f"classifier_logits_{source}"])


def test_old_checkpoint_resumes_without_being_refused(tmp_path):
    """Its run record names the masking by its old ``_target_``: that is the same masking, not a different one."""
    fasta = write_fasta(tmp_path / "genome.fa", random_genome(7, (3000, 2000)))  # the fixture's genome, same content
    cfg = compose_train(tmp_path, OVERRIDES + [f"data.fasta={fasta}", "trainer.max_steps=3"])
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    shutil.copyfile(CKPT, last)
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.ckpt_path = str(last)
    train(cfg)
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 3


def test_a_config_written_for_the_flat_layout_still_builds(tmp_path):
    """``_target_``s of the flat layout (a user's own config group, an old run's config) name the same classes."""
    from gm.config import current_target
    from gm.data.genome import GenomeDataModule
    from gm.masking.strategies import KmerSpanMasking
    from gm.train import build

    assert current_target("gm.masking.GeneMaskMasking") == "gm.masking.strategies.GeneMaskMasking"
    assert current_target("gm.masking.strategies.GeneMaskMasking") == "gm.masking.strategies.GeneMaskMasking"
    assert current_target("pytorch_lightning.Trainer") == "pytorch_lightning.Trainer"
    cfg = compose_train(tmp_path, TINY + ["logger=none", "masking._target_=gm.masking.KmerSpanMasking",
                                          "data._target_=gm.genome.GenomeDataModule"])
    datamodule, module, _ = build(cfg)
    assert isinstance(datamodule, GenomeDataModule) and isinstance(module.masking, KmerSpanMasking)
    assert cfg.masking._target_ == "gm.masking.strategies.KmerSpanMasking"
