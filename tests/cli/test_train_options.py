"""`sd-custom-vae train`'s options as a user meets them: `--help` in one group per section of TrainConfig, each
showing what the flag's absence gives."""

import pytest

from sd_custom_vae.cli import build_parser, main
from sd_custom_vae.cli.train import resolve_config
from sd_custom_vae.training.config import DEFAULT_PRESET, sections
from sd_custom_vae.training.presets import PRESETS, load_config


def help_groups(capsys) -> dict[str, str]:
    """`train --help`'s groups: title → the group's text, whitespace collapsed (argparse wraps lines)."""
    with pytest.raises(SystemExit) as exit:
        main(["train", "--help"])
    assert exit.value.code == 0
    groups, title = {}, None
    for line in capsys.readouterr().out.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            title = line[:-1]
            groups[title] = ""
        elif title is not None:
            groups[title] = " ".join([groups[title], *line.split()]).strip()
    return groups


def test_train_help_lists_the_flags_in_one_group_per_section(capsys):
    groups = help_groups(capsys)
    titles = [title for title in sections() if title is not None]
    assert len(titles) >= 6 and set(titles) < set(groups)
    for title in titles:
        for f in sections()[title]:
            if f.metadata["flag"]:
                assert f"--{f.name.replace('_', '-')}" in groups[title], (f.name, title)
    assert "--config" in groups["where the values start"] and "--overwrite" in groups["what the run writes"]


def test_train_help_shows_the_value_a_flag_s_absence_gives(capsys):
    groups = help_groups(capsys)
    preset = PRESETS[DEFAULT_PRESET]
    assert (f"optimizer steps (default: {preset.steps}, from the {DEFAULT_PRESET} preset)"
            in groups["optimisation"])
    assert f"(default: {preset.resolution}, from the {DEFAULT_PRESET} preset)" in groups["data"]
    # an option the preset leaves unset shows no value: its help says what unset means
    assert "default: None" not in " ".join(groups.values())


def test_the_default_preset_is_what_train_and_load_config_start_from():
    assert DEFAULT_PRESET in PRESETS
    assert load_config() == PRESETS[DEFAULT_PRESET]
    assert resolve_config(build_parser().parse_args(["train"])).preset == DEFAULT_PRESET
