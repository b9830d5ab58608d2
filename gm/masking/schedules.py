"""Masking that changes during training: the curricula of GeneMask's successor (Roy et al., ECAI 2024).

A schedule holds two strategies and says, for each batch, which one masks it:

- :class:`StepCurriculum` (``masking=cm_step``): Global-PMI with a probability ``q`` that rises with
  the optimiser step, DNABERT's ``kmer_span`` otherwise;
- :class:`PlateauSwitch` (``masking=cm_gems``): GeneMask until two consecutive validation
  perplexities differ by less than ``tau``, then Global-PMI for good.

The choice for a batch is a pure function of a uniform draw the module makes from (seed, the
batch's identity), the optimiser step and the schedule's recorded state (:meth:`state_dict`, kept
in every checkpoint), so every DDP rank and a resumed run choose the same strategy for the same
batch. The strategies themselves are unchanged: a schedule only picks one per batch, on the host,
from Python numbers (no tensor is read, so no device synchronisation).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from gm.masking.strategies import MaskingStrategy
from gm.utils import GMError


def global_pmi_share(step: int, total_steps: int) -> float:
    """CM-STEP's ``q``: the probability that a batch at optimiser ``step`` of ``total_steps`` is masked by Global-PMI.

    ``floor(100 * step / T) / 100``: 0 at the start, rising in steps of 1% (of 1/T when T < 100)
    and 1 from step T on. For T a multiple of 100 this is the released code's
    ``floor(step / floor(T / 100)) / 100``, which divides by zero for T < 100 and exceeds 1 when
    T is not a multiple of 100.
    """
    if total_steps < 1:
        raise GMError(f"masking=cm_step needs trainer.max_steps >= 1, got {total_steps}")
    return min(1.0, (100 * max(0, step) // total_steps) / 100)


def build_strategy(spec: MaskingStrategy | Mapping[str, Any], k: int, role: str) -> MaskingStrategy:
    """A schedule's strategy from its config (``masking.first``/``masking.second``), with the run's ``k``."""
    if isinstance(spec, MaskingStrategy):
        if spec.k != k:
            raise GMError(f"masking.{role} has k={spec.k} but the run has k={k}")
        return spec
    from hydra.utils import instantiate  # configs arrive un-instantiated (_recursive_: false) to receive k

    strategy = instantiate(spec, k=k)
    if not isinstance(strategy, MaskingStrategy):
        raise GMError(f"masking.{role} must be a masking strategy (e.g. its defaults: genemask@{role}), got {type(strategy).__name__}")
    return strategy


class MaskingSchedule:
    """Two strategies and the rule that picks one per batch; :meth:`phase` is logged as ``train/masking_phase``.

    Validation always masks with one strategy (``validate_with``: ``first`` or ``second``) and the
    module's fixed validation draws, so the validation curve, and CM-GEMS's plateau test, compare
    like with like across a switch.
    """

    name = "schedule"
    #: whether the schedule needs validation during training to do its job
    needs_validation = False

    def __init__(
        self,
        first: MaskingStrategy | Mapping[str, Any],
        second: MaskingStrategy | Mapping[str, Any],
        k: int = 6,
        validate_with: str = "first",
    ) -> None:
        if validate_with not in ("first", "second"):
            raise GMError(f"masking.validate_with must be 'first' or 'second', got {validate_with!r}")
        self.k = k
        self.first = build_strategy(first, k, "first")
        self.second = build_strategy(second, k, "second")
        self.validate_with = validate_with

    @property
    def validation_strategy(self) -> MaskingStrategy:
        return self.first if self.validate_with == "first" else self.second

    def strategy_for(self, step: int, total_steps: int, draw: float) -> MaskingStrategy:
        """The strategy that masks a training batch at optimiser ``step``; ``draw`` is the batch's uniform in [0, 1)."""
        raise NotImplementedError

    def phase(self, step: int, total_steps: int) -> float:
        """What ``train/masking_phase`` shows: 0 = the first strategy ... 1 = the second."""
        raise NotImplementedError

    def after_validation(self, step: int, perplexity: float) -> bool:
        """Record a validation perplexity (the same on every rank); True when the schedule switched now."""
        return False

    def wants_validation_at(self, step: int) -> bool:
        """Whether the module should validate before training from ``step`` (CM-GEMS's step-0 point)."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k not in ("first", "second", "k"))
        return f"{type(self).__name__}(first={self.first!r}, second={self.second!r}, {settings})"


class StepCurriculum(MaskingSchedule):
    """CM-STEP: a batch at step s of T is masked by ``second`` (Global-PMI) with probability
    :func:`global_pmi_share` (s, T), else by ``first`` (DNABERT's ``kmer_span``)."""

    name = "cm_step"

    def strategy_for(self, step: int, total_steps: int, draw: float) -> MaskingStrategy:
        return self.second if draw < global_pmi_share(step, total_steps) else self.first

    def phase(self, step: int, total_steps: int) -> float:
        return global_pmi_share(step, total_steps)


class PlateauSwitch(MaskingSchedule):
    """CM-GEMS: ``first`` (GeneMask) until two consecutive validation perplexities differ by less
    than ``tau``, then ``second`` (Global-PMI) for good (easy to hard).

    The perplexity is exp of the validation MLM loss, reduced over all ranks. With
    ``validate_at_start`` the untrained model's validation (step 0) is the first point, so a large
    ``tau`` switches at the first validation during training; without it, as in the released code,
    the earliest switch is at the second.
    """

    name = "cm_gems"
    needs_validation = True

    def __init__(self, *args: Any, tau: float = 1.0, validate_at_start: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not (isinstance(tau, (int, float)) and tau >= 0 and math.isfinite(tau)):
            raise GMError(f"masking.tau must be a finite number >= 0 (a perplexity difference), got {tau}")
        self.tau = float(tau)
        self.validate_at_start = bool(validate_at_start)
        self._phase = 0
        self._switched_at: int | None = None
        self._history: list[tuple[int, float]] = []  # (optimiser step, validation perplexity)

    @property
    def switched_at(self) -> int | None:
        """The optimiser step after whose validation the switch happened (None: not yet)."""
        return self._switched_at

    @property
    def history(self) -> list[tuple[int, float]]:
        return list(self._history)

    def strategy_for(self, step: int, total_steps: int, draw: float) -> MaskingStrategy:
        return self.second if self._phase else self.first

    def wants_validation_at(self, step: int) -> bool:
        return self.validate_at_start and step == 0 and not self._history

    def phase(self, step: int, total_steps: int) -> float:
        return float(self._phase)

    def after_validation(self, step: int, perplexity: float) -> bool:
        previous = self._history[-1][1] if self._history else None
        self._history.append((int(step), float(perplexity)))
        # NaN (a diverged run) compares False: no switch
        if self._phase == 0 and previous is not None and abs(perplexity - previous) < self.tau:
            self._phase, self._switched_at = 1, int(step)
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self._phase, "switched_at": self._switched_at, "history": [list(p) for p in self._history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._phase = int(state.get("phase", 0))
        self._switched_at = state.get("switched_at")
        self._history = [(int(s), float(p)) for s, p in state.get("history", [])]
