"""Which masking strategy has which option, for clear errors when an option is given to the wrong one.

Kept free of torch, so an entry point can check its command line before Hydra runs: Hydra refuses
``masking.ranking=…`` with the default ``kmer_span`` and advises ``+masking.ranking=…``, which
then fails too. The option belongs to the GeneMask (or NPMI-ranked) strategies; this says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"
GENEMASK_FAMILY = ("genemask", "genemask_position", "genemask_released")
#: the strategies that rank positions by NPMI (gm.masking.strategies.NPMIRankedMasking)
NPMI_RANKED = GENEMASK_FAMILY + ("global_pmi",)
#: options only some strategies have -> (what to call them, their masking= names);
#: random_span keeps all_high_if_fewer_than and ties, with random ranks
OPTION_OWNERS = {
    "ranking": ("NPMI-ranked", NPMI_RANKED),
    "rank_by": ("NPMI-ranked", NPMI_RANKED),
    "special_rank": ("NPMI-ranked", NPMI_RANKED),
    "all_high_if_fewer_than": ("genemask", GENEMASK_FAMILY),
    "ties": ("genemask", GENEMASK_FAMILY),
}


def option_error(masking: str, option: str, options: Iterable[str] = ()) -> str:
    """The line for ``masking.<option>`` given to a strategy that has no such option."""
    if option in OPTION_OWNERS:
        family, owners = OPTION_OWNERS[option]
        return (
            f"masking.{option} is an option of the {family} strategies (masking={', '.join(owners)}); "
            f"{masking} has no {option}: choose one of those, e.g. masking=genemask masking.{option}=…"
        )
    known = ", ".join(sorted(options))
    return f"masking.{option} is not an option of masking={masking}" + (f" (its options: {known})" if known else "")


def _defaults(path: Path) -> list:
    """A config file's defaults list, as plain strings and dicts."""
    if not path.is_file():
        return []
    return list(OmegaConf.to_container(OmegaConf.load(path)).get("defaults") or [])


def masking_keys(name: str) -> set[str] | None:
    """The keys of ``conf/masking/<name>.yaml``, with those of the configs it extends (None: no such file)."""
    path = CONF / "masking" / f"{name}.yaml"
    if not path.is_file():
        return None
    keys = {str(key) for key in OmegaConf.load(path) if key != "defaults"}
    for entry in _defaults(path):
        if isinstance(entry, str) and "@" in entry:  # a schedule's strategy: genemask@first -> masking.first
            keys.add(entry.split("@", 1)[1])
        elif isinstance(entry, str) and entry != "_self_":
            keys |= masking_keys(entry) or set()
    return keys


def chosen_maskings(overrides: Sequence[str]) -> list[str]:
    """The masking strategy (or a sweep's strategies) that ``train.py <overrides>`` composes."""
    choice: str | None = None
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key == "masking":
            choice = value
        elif key == "experiment" and choice is None:
            for entry in _defaults(CONF / "experiment" / f"{value}.yaml"):
                if isinstance(entry, dict) and "override /masking" in entry:
                    choice = str(entry["override /masking"])
    if choice is None:
        for entry in _defaults(CONF / "train.yaml"):
            if isinstance(entry, dict) and "masking" in entry:
                choice = str(entry["masking"])
    return [part.strip() for part in (choice or "").split(",") if part.strip()]


def masking_override_error(argv: Sequence[str]) -> str | None:
    """The error line for a ``masking.<option>=…`` that the chosen masking does not have, or None.

    Meant for ``train.py``'s command line before Hydra parses it, so the user reads which
    strategies have the option rather than Hydra's advice to append it. Only plain ``key=value``
    overrides are checked (``+``/``++`` add keys on purpose, and the strategy then refuses the
    option itself); with another ``--config-name`` nothing is checked.
    """
    if any(arg in ("--config-name", "-cn") or arg.startswith("--config-name=") for arg in argv):
        return None
    options = [arg.partition("=")[0][len("masking."):] for arg in argv if arg.startswith("masking.") and "=" in arg]
    if not options:
        return None
    for masking in chosen_maskings([arg for arg in argv if not arg.startswith("-")]):
        keys = masking_keys(masking)
        if keys is None:
            return None  # an unknown strategy: Hydra lists the valid ones
        for option in options:
            if option.split(".")[0] not in keys:
                return option_error(masking, option.split(".")[0], {key for key in keys if not key.startswith("_")})
    return None
