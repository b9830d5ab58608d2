"""Pretrain a k-mer BERT with a chosen masking strategy: ``python train.py masking=genemask``.

Thin entry point: Hydra composes ``conf/train.yaml``; :func:`gm.train.train` does the work.
"""

import hydra
from omegaconf import DictConfig

from gm.config import run_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_entry(run, cfg)


def run(cfg: DictConfig) -> object:
    from gm.train import train  # imported after the config is checked: `--help` and bad values stay fast

    return train(cfg)


if __name__ == "__main__":
    import sys

    from gm.masking.options import masking_override_error

    # `masking.<option>=` that the chosen strategy lacks fails inside Hydra; name the strategies that have it
    if (problem := masking_override_error(sys.argv[1:])) is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
