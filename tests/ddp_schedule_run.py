"""A pretraining run that records, on every DDP rank, the masking phase of every training step.

``python tests/ddp_schedule_run.py <train.py overrides>`` with ``GM_PHASE_DIR`` set: composes the
real config as ``train.py`` does (Lightning's DDP launcher starts this script again for the other
ranks) and writes ``rank<r>.json``: {step: phase}. Used by ``tests/test_schedules.py``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gm.config  # noqa: E402,F401  (the ${gm.*} resolvers)
from gm import train as pipeline  # noqa: E402


class PhaseRecorder(pl.Callback):
    """{step: phase} of the batches this rank trained on, written when training ends."""

    def __init__(self) -> None:
        self.phases: dict[int, float] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self.phases[int(trainer.global_step)] = pl_module.masking.phase(int(trainer.global_step), pl_module.total_steps())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = Path(os.environ["GM_PHASE_DIR"]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps(self.phases))


@hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="train")
def main(cfg: DictConfig) -> None:
    build = pipeline.build

    def build_with_recorder(config: DictConfig):
        datamodule, module, trainer = build(config)
        recorder = PhaseRecorder()
        trainer.callbacks.append(recorder)
        return datamodule, module, trainer

    pipeline.build = build_with_recorder
    pipeline.train(cfg)


if __name__ == "__main__":
    main()
