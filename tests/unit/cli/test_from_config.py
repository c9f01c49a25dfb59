"""Options generated from a configuration dataclass: fields -> options -> the same dataclass."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from bcclassify.cli.from_config import add_config_options, config_from_args
from bcclassify.cli.main import build_parser
from bcclassify.lab.adapt import AdaptConfig
from bcclassify.training.runs import TrainConfig


@dataclass
class Toy:
    source: str = field(metadata={"flag": "--from", "metavar": "MODEL", "help": "where from"})
    size: int | None = field(default=None, metadata={"help": "side in px"})
    rate: float = 0.5
    mode: str = field(default="a", metadata={"choices": ("a", "b")})
    count: int = field(default=3, metadata={"metavar": "K", "help": "how many (%(default)s)"})
    verbose: bool = field(default=False, metadata={"help": "say more"})
    augment: bool = True
    shuffle: bool = field(default=True, metadata={"flag": "--no-shuffle", "help": "in order"})
    tags: list = field(default_factory=list)
    internal: str = "kept"


def _parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy")
    add_config_options(parser, Toy, skip=("tags", "internal"), **kwargs)
    return parser


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    [action] = [a for a in parser._actions if flag in a.option_strings]
    return action


def test_defaults_round_trip_to_the_dataclass_defaults():
    config = config_from_args(Toy, _parser().parse_args(["--from", "m"]))
    assert config == Toy(source="m")


def test_every_kind_of_option_parses_into_its_field():
    args = ["--from", "m", "--size", "64", "--rate", "1e-3", "--mode", "b", "--count", "7"]
    args += ["--verbose", "--no-augment", "--no-shuffle"]
    config = config_from_args(Toy, _parser().parse_args(args))
    assert config == Toy("m", 64, 1e-3, "b", 7, True, False, False)
    assert config.internal == "kept" and config.tags == []  # not options: their defaults


def test_help_choices_metavar_and_required_come_from_the_metadata():
    parser = _parser()
    source = _option(parser, "--from")
    assert (source.dest, source.metavar, source.help, source.required) == (
        "source",
        "MODEL",
        "where from",
        True,
    )
    assert _option(parser, "--mode").choices == ("a", "b")
    assert _option(parser, "--size").type is int and _option(parser, "--rate").type is float
    assert _option(parser, "--rate").help is None
    assert isinstance(_option(parser, "--augment"), argparse.BooleanOptionalAction)
    assert _option(parser, "--no-shuffle").dest == "shuffle"
    text = parser.format_help()
    assert "--count K" in text and "how many (3)" in text and "--augment, --no-augment" in text
    assert "--tags" not in text and "--internal" not in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--from", "m", "--mode", "c"])


def test_choices_known_at_run_time_and_optional_required_fields():
    parser = _parser(choices={"mode": ("x", "y")}, optional=True)
    assert _option(parser, "--mode").choices == ("x", "y")
    assert parser.parse_args([]).source is None


def test_unknown_skips_and_unsupported_types_are_refused():
    with pytest.raises(ValueError, match="no field nope"):
        add_config_options(argparse.ArgumentParser(), Toy, skip=("nope",))
    with pytest.raises(TypeError, match="'tags'"):
        add_config_options(argparse.ArgumentParser(), Toy, skip=("internal",))


def _subcommand(name: str) -> argparse.ArgumentParser:
    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def test_train_options_are_every_train_config_field_with_its_default():
    parser = _subcommand("train")
    args = parser.parse_args(["--arch", "cnn", "--data", "d"])
    assert config_from_args(TrainConfig, args) == TrainConfig(arch="cnn", data="d")
    dests = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= dests
    assert "--no-shuffle" in parser.format_help() and "--resume RUN_ID" in parser.format_help()


def test_adapt_options_build_the_adapt_config():
    parser = _subcommand("adapt")
    args = parser.parse_args(["--from", "src", "--cells", "dir", "--name", "lab", "--evaluate"])
    config = config_from_args(AdaptConfig, args)
    assert config == AdaptConfig(source="src", cells="dir", name="lab", evaluate=True)
    assert "cells a class (10)" in " ".join(parser.format_help().split())
