"""Lightning's W&B logger, without the output that every run printed and no user could act on."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger


class WandbLogger(_LightningWandbLogger):
    """``pytorch_lightning.loggers.WandbLogger`` that keeps the console to what a user needs.

    - Lightning always passes ``anonymous=None`` to ``wandb.init``, and wandb (0.31 here) warns on
      every run that the setting "has no effect"; it is dropped unless set.
    - wandb's ``quiet`` setting (unless ``settings`` says otherwise): the header keeps where the run
      is saved (and whether it is offline), the footer's 30-line history/summary table goes (the
      same numbers are in ``csv/metrics.csv`` and the run; ``wandb sync <dir>`` uploads it).
    """

    def __init__(self, *args: Any, settings: Any = None, **kwargs: Any) -> None:
        if isinstance(settings, DictConfig):  # Hydra passes nested config as DictConfig; wandb wants a dict
            settings = OmegaConf.to_container(settings, resolve=True)
        if settings is None or isinstance(settings, dict):  # a wandb.Settings object is taken as it is
            settings = {"quiet": True, **(settings or {})}
        super().__init__(*args, settings=settings, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
