"""``--version`` and help text: every option of every command says what it does."""

from __future__ import annotations

import argparse
from importlib.metadata import version

import dlt

from klaviyo_source.cli import build_parser
from klaviyo_source.cli_errors import EXIT_OK


def _parsers(parser: argparse.ArgumentParser, path: str):
    yield path, parser
    for action in parser._actions:  # argparse keeps its subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for where, current in _parsers(parser, path):
        for action in current._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help or action.help == argparse.SUPPRESS or not action.help.strip():
                missing.append(f"{where}: {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_version_names_the_package_and_dlt(cli):
    run = cli("--version")
    assert run.code == EXIT_OK
    assert run.out.strip() == f"klaviyo-dlt {version('klaviyo-dlt')} (dlt {dlt.__version__})"


def test_every_option_of_every_command_has_help():
    assert _undocumented(build_parser(), "klaviyo-dlt") == []


def test_every_sandbox_option_has_help():
    from klaviyo_sandbox.server import build_parser as sandbox_parser

    assert _undocumented(sandbox_parser(), "klaviyo-dlt sandbox") == []


def test_options_without_help_are_found():
    """The check above can fail: an option without help text is reported."""
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--documented", help="does a thing")
    parser.add_argument("--bare")
    assert _undocumented(parser, "x") == ["x: --bare"]


def test_demo_help_lists_its_options(cli):
    run = cli("demo", "--help")
    assert run.code == EXIT_OK
    for flag, words in (("--profiles", "profiles"), ("--events", "events"), ("--seed", "seed"),
                        ("--duckdb-path", "DuckDB")):
        line = next(line for line in run.out.splitlines() if line.strip().startswith(flag))
        assert words in run.out[run.out.index(line):run.out.index(line) + 200], run.out
