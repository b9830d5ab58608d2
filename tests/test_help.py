"""`train.py --help` and `finetune.py --help` list only the config groups and options that apply
(conf/hydra/help/*.yaml), and those lists stay true to conf/."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import CONF, compose_train, run_cli

GROUP_LINE = re.compile(r"^(\w+): (\w+(?:, \w+)*)(?:\s{2,}.*)?$")


def listed(app: str) -> dict[str, list[str]]:
    """group -> options, as the help template of ``app`` lists them."""
    template = yaml.safe_load((CONF / "hydra" / "help" / f"{app}.yaml").read_text())["template"]
    groups = template.split("== Configuration groups ==")[1].split("== Config ==")[0]
    return {m[1]: m[2].split(", ") for line in groups.splitlines() if (m := GROUP_LINE.match(line))}


def test_train_help_lists_no_fine_tuning_data_or_experiments(tmp_path):
    result = run_cli("train.py", ["--help"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "masking: kmer_span, bert, genemask" in text and "data: genome, hg38 " in text
    for word in ("prom_core", "prom_300", "cohn_enh", "splice_40", "fewshot", "custom", "paper_grid", "comparison_finetune"):
        assert word not in text, word
    assert "task_name: pretrain" in text  # the composed config is still shown


def test_finetune_help_lists_no_masking_or_optimiser(tmp_path):
    result = run_cli("finetune.py", ["--help"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "data: prom_core, prom_300, cohn_enh, splice_40, custom " in text
    assert "masking" not in text and "optim" not in text and "callbacks:" not in text.split("== Config ==")[0]
    for word in ("genome", "hg38", "genemask_dnabert", "dnabert_kmer_span", "comparison_pretrain"):
        assert word not in text.split("== Config ==")[0], word
    assert "task_name: finetune" in text


@pytest.mark.parametrize("app", ["train", "finetune"])
def test_help_lists_the_apps_groups_and_every_option_composes(app, tmp_path):
    """A group is listed iff the app's config uses it; every listed option composes with that app."""
    groups = listed(app)
    defaults = yaml.safe_load((CONF / f"{app}.yaml").read_text())["defaults"]
    used = {next(iter(d)) for d in defaults if isinstance(d, dict)} - {"hydra", "override hydra/help"}
    assert set(groups) == used
    for group, options in groups.items():
        for option in options:
            assert (CONF / group / f"{option}.yaml").is_file(), f"{group}={option}"
            extra = ["data.custom_train=x.tsv"] if option == "custom" else []
            compose_train(tmp_path, [f"{group}={option}", *extra], config_name=app)


def test_every_option_in_conf_is_listed_by_one_help():
    """A new option in conf/ must be added to the help of the entry point it is for (bases such as
    data/fewshot, which the tasks inherit, are not options of their own)."""
    shown = {(group, option) for app in ("train", "finetune") for group, options in listed(app).items() for option in options}
    for folder in CONF.iterdir():
        if not folder.is_dir() or folder.name == "hydra":
            continue
        configs = {path.stem: yaml.safe_load(path.read_text()) or {} for path in folder.glob("*.yaml")}
        bases = {d for c in configs.values() for d in c.get("defaults", []) if isinstance(d, str)}
        for option in configs:
            assert (folder.name, option) in shown or option in bases, f"{folder.name}={option} is in no --help"
