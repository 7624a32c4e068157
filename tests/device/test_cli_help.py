"""Every command explains itself: `--help` and `--version` exit 0 for both CLIs and every subcommand, each
subcommand has a description and an example, and every option and argument has help text."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from converter.cli import build_parser as convert_parser
from edge_infer.cli import build_parser as infer_parser


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    out = [("edge-convert", convert_parser()), ("edge-infer", infer_parser())]
    for action in infer_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            out += [(f"edge-infer {name}", sub) for name, sub in action.choices.items()]
    return out


ALL = parsers()


@pytest.mark.parametrize(("name", "parser"), ALL, ids=[n for n, _ in ALL])
def test_every_option_has_help_and_every_command_an_example(name: str, parser: argparse.ArgumentParser) -> None:
    undocumented = [a.option_strings or a.dest for a in parser._actions
                    if not isinstance(a, argparse._HelpAction) and not a.help]
    assert undocumented == [], f"{name}: no help for {undocumented}"
    assert parser.description, name
    if name.startswith("edge-infer "):
        assert parser.epilog and parser.epilog.startswith("example:"), name
        assert name.split(" ", 1)[1] in parser.epilog, name


@pytest.mark.parametrize(("name", "parser"), ALL, ids=[n for n, _ in ALL])
def test_help_exits_0_and_prints_usage(name: str, parser: argparse.ArgumentParser) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        parser.parse_args(["--help"])
    assert done.value.code == 0 and out.getvalue().startswith("usage:"), name


@pytest.mark.parametrize("parser", [convert_parser, infer_parser], ids=["edge-convert", "edge-infer"])
def test_version_exits_0(parser) -> None:
    from edge_infer import __version__

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        parser().parse_args(["--version"])
    assert done.value.code == 0 and out.getvalue().strip().endswith(__version__)
