"""Each TrainConfig field is described once (core/training.py SETTINGS); validation and the
``train`` flags are made from the descriptions. These tests fail when the places drift apart.
(The training form's side is in test_ui_panels.py.)"""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from lego_studio.cli import build_parser
from lego_studio.commands import train
from lego_studio.core.errors import InputError
from lego_studio.core.oom import as_train_flags
from lego_studio.core.train_config import CTX_REGIONS, LR_SCHEDULES, METHODS, REC_REGIONS, SETTINGS, SETTING_GROUPS, Setting, TrainConfig, UNET_BATCHING, _settings_of, describe

# The flags scripts, the README and CI use: a renamed field must not rename its flag.
TRAIN_CONFIG_FLAGS = {
    "--method", "--name", "--vectors", "--init-words", "--init-from", "--subject", "--mask-colour", "--no-mask-colour", "--mask-shape", "--no-mask-shape",
    "--subject-token-steps",
    "--w-subj", "--rec-region", "--concept-inside-weight", "--w-ctx", "--ctx-region", "--context-subjects",
    "--w-words", "--positive-words", "--negative-words", "--steps", "--lr", "--lr-schedule", "--warmup-steps",
    "--batch-size", "--resolution", "--seed", "--flip", "--no-flip", "--timestep-focus", "--gradient-checkpointing",
    "--no-gradient-checkpointing", "--unet-batching", "--checkpoint-every", "--preview-every", "--preview-steps",
}
NUMBERS = [s for s in SETTINGS.values() if s.kind in ("int", "float")]


def test_every_field_is_described_once_with_help_group_and_range():
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert list(SETTINGS) == names
    labels = [s.label for s in SETTINGS.values()]
    assert len(set(labels)) == len(labels)
    for setting in SETTINGS.values():
        assert setting.help.strip() and setting.label.strip() and setting.group in SETTING_GROUPS, setting.name
        if setting.kind in ("int", "float"):
            # A valid range, and an end for the form's spin box.
            assert setting.minimum is not None or setting.positive, setting.name
            assert setting.maximum is not None or setting.form_maximum is not None, setting.name
        if setting.kind == "choice":
            assert setting.choices, setting.name
    for method in METHODS:
        defaults = TrainConfig.preset(method, subject="a cat")
        for setting in SETTINGS.values():
            assert setting.problem(getattr(defaults, setting.name)) is None, (method, setting.name)


def test_choices_are_the_one_definition_of_each_list():
    assert SETTINGS["method"].choices is METHODS
    assert SETTINGS["lr_schedule"].choices is LR_SCHEDULES
    assert SETTINGS["rec_region"].choices is REC_REGIONS
    assert SETTINGS["ctx_region"].choices is CTX_REGIONS
    assert SETTINGS["unet_batching"].choices is UNET_BATCHING


def test_a_field_without_a_description_is_refused_at_once():
    @dataclasses.dataclass
    class Config:
        described: int = dataclasses.field(default=1, metadata=describe(help="h", label="L", group="Other", minimum=0))
        forgotten: int = 2

    with pytest.raises(TypeError, match="Config.forgotten has no description"):
        _settings_of(Config)


def _out_of_range(setting: Setting) -> list:
    values = []
    if setting.positive:
        values.append(0)
    elif setting.minimum is not None:
        values.append(setting.minimum - (setting.multiple_of or 1))
    if setting.maximum is not None:
        values.append(setting.maximum + (1 if setting.kind == "int" else 0.5))
    if setting.multiple_of:
        values.append(setting.minimum + setting.multiple_of + 1)
    values.append("12")  # text is not a number
    return values


@pytest.mark.parametrize("setting", NUMBERS, ids=[s.name for s in NUMBERS])
def test_out_of_range_numbers_are_refused_in_one_line_naming_the_field_and_range(setting):
    for value in _out_of_range(setting):
        if setting.kind == "int" and isinstance(value, float):
            value = int(value)
        with pytest.raises(InputError) as info:
            TrainConfig.from_dict({"subject": "a cat", setting.name: value}, source="my.json")
        message = str(info.value)
        assert message == f"my.json: {setting.name} must be {setting.range_text()} (got {value!r})"
        assert "\n" not in message


def test_a_number_range_reads_as_before():
    assert SETTINGS["num_vectors"].range_text() == "a whole number from 1 to 16"
    assert SETTINGS["steps"].range_text() == "a whole number >= 1"
    assert SETTINGS["lr"].range_text() == "a positive number"
    assert SETTINGS["concept_inside_weight"].range_text() == "a number from 0 to 1"
    assert SETTINGS["resolution"].range_text() == "a multiple of 8, at least 8"


@pytest.mark.parametrize("setting", [s for s in SETTINGS.values() if s.choices], ids=lambda s: s.name)
def test_a_value_outside_the_choices_is_refused_naming_them(setting):
    with pytest.raises(InputError) as info:
        TrainConfig.from_dict({"subject": "a cat", setting.name: "nonsense"})
    assert str(info.value) == f"config: {setting.name} must be one of {', '.join(setting.choices)} (got 'nonsense')"


# ------------------------------------------------------------------------------ train flags


def _train_parser() -> argparse.ArgumentParser:
    commands = argparse.ArgumentParser().add_subparsers()
    train.register(commands)
    return commands.choices["train"]


def _flag_actions() -> dict:
    """Flag -> argparse action of the train command's TrainConfig flags."""
    actions = {}
    for action in _train_parser()._actions:
        if action.dest in SETTINGS:
            for flag in action.option_strings:
                actions[flag] = action
    return actions


def test_the_train_flags_are_the_ones_scripts_use():
    actions = _flag_actions()
    assert set(actions) == TRAIN_CONFIG_FLAGS
    assert {a.dest for a in actions.values()} == {s.name for s in SETTINGS.values() if s.cli}


def test_each_flag_is_made_from_its_description():
    for flag, action in _flag_actions().items():
        setting = SETTINGS[action.dest]
        assert setting.cli_flag in action.option_strings
        assert action.default is None, flag  # unset: the preset's or --config's value stays
        assert action.help.replace("%%", "%").startswith(setting.help.rstrip(")")), flag  # notes may join its ")"
        assert tuple(action.choices or ()) == setting.choices, flag
        if setting.kind == "words":
            assert action.nargs == "+", flag


def _valid_non_default(setting: Setting):
    """A valid value of the setting that is not its default."""
    if setting.kind == "choice":
        return "lego" if setting.name == "method" else next(c for c in reversed(setting.choices) if c != getattr(TrainConfig(), setting.name))
    if setting.kind == "bool":
        return not getattr(TrainConfig(), setting.name)
    if setting.kind == "int":
        return int(setting.minimum) + 2 * (setting.multiple_of or 1)
    if setting.kind == "float":
        return 0.5
    if setting.kind == "words":
        return ["a blue star", "a green heart"]
    return {"name": "snowy", "subject": "a red cube"}.get(setting.name, "x.safetensors")


def _argv(values: dict) -> list[str]:
    argv = []
    for name, value in values.items():
        flag = SETTINGS[name].cli_flag
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            argv += [flag, *value]
        else:
            argv += [flag, str(value)]
    return argv


def test_flags_round_trip_into_the_config_from_dict_makes(tmp_path):
    values = {s.name: _valid_non_default(s) for s in SETTINGS.values() if s.cli}
    assert len(values) > 20
    out = tmp_path / "snowy.safetensors"
    args = build_parser().parse_args(["train", "--out", str(out), *_argv(values)])
    config = train._build_config(args, tmp_path / "snowy.run", out)
    assert config == TrainConfig.from_dict(values)
    for name, value in values.items():
        assert getattr(config, name) == value, name


@pytest.mark.parametrize("method", METHODS)
def test_no_flags_leave_the_method_preset(tmp_path, method):
    out = tmp_path / "snowy.safetensors"
    args = build_parser().parse_args(["train", "--out", str(out), "--method", method, "--subject", "a cat"])
    config = train._build_config(args, tmp_path / "snowy.run", out)
    assert config == TrainConfig.preset(method, subject="a cat", name="snowy")


def test_help_names_each_default_and_range():
    help_of = {flag: action.help for flag, action in _flag_actions().items()}
    assert help_of["--w-ctx"].endswith("(0 = off; default: 0.2 for lego, 0 for ti)")
    assert help_of["--vectors"].endswith("(1-16; default: 1)")
    assert help_of["--lr"].endswith("(default: 0.005)")
    assert help_of["--name"].endswith("(default: the --out file name)")


def test_out_of_memory_advice_names_flags_that_parse_to_the_settings(tmp_path):
    changed = {"unet_batching": "split", "gradient_checkpointing": True, "batch_size": 2}
    flags = as_train_flags(changed, TrainConfig)
    assert flags == "--unet-batching split --gradient-checkpointing --batch-size 2"
    out = tmp_path / "c.safetensors"
    args = build_parser().parse_args(["train", "--out", str(out), "--subject", "a cat", *flags.split()])
    config = train._build_config(args, tmp_path / "c.run", out)
    assert {key: getattr(config, key) for key in changed} == changed
