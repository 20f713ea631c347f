"""Dataclass field docstrings become CLI help; the CLI builds the config the options describe."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from futurelens.cli import app
from futurelens.config import command, field_docs


@dataclass
class _Example:
    """An example config."""

    size: int = 3
    """How many   things
    to make."""
    name: str = "x"
    undocumented: bool = False


def test_field_docs_reads_the_string_under_each_field():
    assert field_docs(_Example) == {"size": "How many things to make."}


def test_command_maps_options_to_fields():
    import typer

    seen = []
    demo_app = typer.Typer()
    demo_app.command()(command(_Example, seen.append))
    result = CliRunner().invoke(demo_app, ["--size", "5", "--undocumented"])
    assert result.exit_code == 0, result.output
    assert seen == [_Example(size=5, name="x", undocumented=True)]
    help_text = CliRunner().invoke(demo_app, ["--help"], env={"COLUMNS": "200"}).output
    assert "How many things to make." in help_text


def test_data_command_help_comes_from_dataconfig_docs():
    result = CliRunner().invoke(app, ["data", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--n-prefixes" in result.output and "Keep only prefixes whose next token" in result.output


def test_demo_command_help_comes_from_pipelineconfig_docs():
    result = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--layers" in result.output and "Layers to train prompts for and evaluate" in result.output


def test_extra_options_reach_run_as_keywords():
    import typer

    from futurelens.config import option

    seen = []
    demo_app = typer.Typer()
    demo_app.command()(command(_Example, lambda cfg, remote: seen.append((cfg, remote)),
                               extra=[option("remote", bool, False, "--remote", help="Run it elsewhere.")]))
    assert CliRunner().invoke(demo_app, ["--size", "2", "--remote"]).exit_code == 0
    assert CliRunner().invoke(demo_app, []).exit_code == 0
    assert seen == [(_Example(size=2), True), (_Example(), False)]
    assert "Run it elsewhere." in CliRunner().invoke(demo_app, ["--help"], env={"COLUMNS": "200"}).output
    with pytest.raises(TypeError, match="clash"):
        command(_Example, print, extra=[option("size", int, 1, "--size")])
