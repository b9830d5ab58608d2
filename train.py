"""Pretrain a k-mer BERT with a chosen masking strategy: ``python train.py masking=genemask``.

Thin entry point: Hydra composes ``conf/train.yaml``; :func:`gm.train.train` does the work.
"""

import hydra
from omegaconf import DictConfig

from gm.config import run_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from gm.train import train  # imported here so `--help` and config errors stay fast

    run_entry(train, cfg)


if __name__ == "__main__":
    main()
