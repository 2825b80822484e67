"""`sd-custom-vae train`'s options as a user meets them: `--help` in one group per section of TrainConfig, each
showing what the flag's absence gives, and old spellings of values still read, with a warning that says when
they go, but never offered."""

import os
import re
import subprocess
import sys

import pytest

from sd_custom_vae.base.deprecation import REMOVAL
from sd_custom_vae.cli import build_parser, main
from sd_custom_vae.cli.train import resolve_config
from sd_custom_vae.training.config import DEFAULT_PRESET, sections
from sd_custom_vae.training.presets import PRESETS, load_config

RENAMED = {f.name: f.metadata["renamed"] for fields in sections().values() for f in fields if f.metadata["renamed"]}


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


def test_old_spellings_are_not_offered(capsys):
    assert RENAMED  # else there is nothing to check
    text = " ".join(help_groups(capsys).values())
    for name in RENAMED:
        current = next(f for fields in sections().values() for f in fields if f.name == name).metadata["choices"]
        offered = re.search(rf"--{name.replace('_', '-')} {{([^}}]*)}}", text).group(1)
        assert offered.split(",") == list(current)


@pytest.mark.parametrize("argv, name, old, new", [
    (["--mode", "scratch"], "mode", "scratch", "new"),
    (["--kl-reduction", "course"], "kl_reduction", "course", "sum"),
    (["--mode", "decoder-finetune", "--teacher", "t", "--decoder-init", "scratch"], "decoder_init", "scratch",
     "random"),
])
def test_an_old_spelling_still_works_with_a_warning_that_names_its_removal(argv, name, old, new):
    args = build_parser().parse_args(["train", *argv])
    with pytest.warns(FutureWarning, match=f"^{name} '{old}' is now '{new}'; the old name stops working in "
                      f"sd-custom-vae {REMOVAL}$"):
        assert getattr(resolve_config(args), name) == new


def test_an_old_spelling_in_a_config_file_warns_too(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("mode: scratch\n")
    with pytest.warns(FutureWarning, match=f"mode 'scratch' is now 'new'.*{REMOVAL}"):
        assert load_config(str(path)).mode == "new"


def test_an_unknown_value_is_one_line_naming_the_flag_and_the_current_choices(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["train", "--mode", "bogus"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sd-custom-vae train: error: argument --mode: invalid choice: "
                                                   "'bogus' (choose from new, decoder-finetune, distill)")


def test_the_warning_of_an_old_spelling_is_one_line_in_the_terminal():
    # train's warns once the configuration is read (here, before the resolution is refused), convert's while the
    # arguments are read: both one line, as errors are
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for argv in (["train", "--mode", "scratch", "--resolution", "4"], ["convert", "--to", "scratch"]):
        done = subprocess.run([sys.executable, "-m", "sd_custom_vae", *argv], capture_output=True, text=True, env=env,
                              check=False)
        lines = done.stderr.splitlines()
        assert done.returncode == 2 and len(lines) == 2, done.stderr
        assert lines[0].startswith(f"sd-custom-vae {argv[0]}: warning: ") and f"sd-custom-vae {REMOVAL}" in lines[0]
        assert lines[1].startswith(f"sd-custom-vae {argv[0]}: error: ")
