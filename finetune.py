"""Few-shot fine-tuning and evaluation: ``python finetune.py data=prom_core shots=10 pretrained=<model>``.

Thin entry point: Hydra composes ``conf/finetune.yaml``; :func:`gm.finetune.finetune` does the work
and writes ``results.json`` into the run folder (``python analyze.py results <folder>`` tabulates them).
"""

import hydra
from omegaconf import DictConfig

from gm.config import run_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="finetune")
def main(cfg: DictConfig) -> None:
    run_entry(run, cfg)


def run(cfg: DictConfig) -> object:
    from gm.finetune import finetune  # imported after the config is checked: `--help` and bad values stay fast

    return finetune(cfg)


if __name__ == "__main__":
    main()
