"""The package's layers: a module imports only from its own layer and the layers below it.

Data flows one way: ``data`` <- ``masking`` <- ``models`` <- the pipelines <- ``analysis`` / ``bench`` /
``experiments`` (see ``gm/__init__.py``). Every import of every module under ``gm/`` is read with
``ast``, those inside functions included, and checked against :data:`LAYERS`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GM = Path(__file__).resolve().parent.parent / "gm"

#: the layers, lowest first: each a list of units (a sub-package or a module); a module may import its
#: own unit, the other units of its layer, and any unit of a lower layer
LAYERS: list[list[str]] = [
    ["gm", "gm.utils"],  # gm/__init__.py and the errors and atomic writes everything uses
    ["gm.data"],
    ["gm.masking"],
    ["gm.models"],
    ["gm.train", "gm.finetune", "gm.callbacks", "gm.loggers", "gm.config", "gm.probe"],  # the pipelines and their glue
    ["gm.analysis", "gm.bench", "gm.experiments"],
    ["gm.comparison"],  # `python -m gm.comparison`: the short name of gm.experiments.comparison
]
#: units of one layer that must not import one another either
INDEPENDENT = {"gm.analysis", "gm.bench", "gm.experiments"}

RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(GM.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str | None:
    """The unit ``module`` belongs to: the longest unit that is it or a package above it."""
    found = [unit for unit in RANK if module == unit or module.startswith(unit + ".")]
    return max(found, key=len) if found else None


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, module)`` for every ``gm`` module ``source`` imports, at any depth in the file."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:  # `from gm import bench` imports the module gm.bench
                sub = f"{base}.{alias.name}"
                is_module = (GM.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or (GM.parent / Path(*sub.split("."))).is_dir()
                found.append((node.lineno, sub if is_module else base))
    return [(line, name) for line, name in found if name == "gm" or name.startswith("gm.")]


def violations(path: Path, source: str | None = None) -> list[str]:
    module = module_name(path)
    unit = unit_of(module)
    assert unit is not None, f"{module} belongs to no layer: add it to LAYERS in tests/test_layers.py"
    found = []
    for line, name in imported_modules(source if source is not None else path.read_text(), module, path.name == "__init__.py"):
        target = unit_of(name)
        if target is None or target == unit or target == "gm":
            continue  # an unknown gm name is the import's own error; `gm` itself is the base
        if RANK[target] > RANK[unit] or (RANK[target] == RANK[unit] and {unit, target} & INDEPENDENT):
            found.append(f"{path.relative_to(GM.parent)}:{line}: {module} ({unit}) imports {name} ({target})")
    return found


MODULES = sorted(GM.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    assert [module_name(p) for p in MODULES if unit_of(module_name(p)) is None] == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(GM.parent)))
def test_no_module_imports_a_higher_layer(path):
    assert violations(path) == []


def test_the_check_sees_upward_imports_at_any_depth():
    """A lower layer importing a higher one is caught, at the top or inside a function, absolute or relative."""
    tokenizer = GM / "data" / "tokenizer.py"
    assert violations(tokenizer, "from gm.models.mlm import MLMModule\n")
    assert violations(tokenizer, "def f():\n    import gm.train\n")
    assert violations(tokenizer, "from ..masking import strategies\n")
    assert violations(GM / "masking" / "npmi.py", "from gm import analysis\n")
    assert violations(GM / "bench" / "cli.py", "from gm.analysis.results import report\n")  # siblings stay apart
    assert violations(GM / "utils.py", "from gm.data import fasta\n")
    assert not violations(tokenizer, "from gm.utils import GMError\nfrom . import fasta\n")
    assert not violations(GM / "finetune.py", "from gm.train import build\n")  # same layer
