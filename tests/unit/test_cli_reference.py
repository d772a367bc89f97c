"""docs/reference/cli.md is the real ``--help`` output of every command, as of now."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from types import ModuleType

import click
import pytest

from unified_jobs.cli import cli

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "gen_cli_reference.py"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    """docs/gen_cli_reference.py, imported by path (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gen_cli_reference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_up_to_date(generator: ModuleType) -> None:
    expected: str = generator.render()
    current = generator.OUTPUT.read_text(encoding="utf-8") if generator.OUTPUT.exists() else ""
    if current != expected:
        diff = "".join(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                "docs/reference/cli.md",
                "what the commands say now",
            )
        )
        pytest.fail(
            "docs/reference/cli.md is out of date; run: python docs/gen_cli_reference.py\n" + diff,
            pytrace=False,
        )


def test_the_reference_has_every_command(generator: ModuleType) -> None:
    def paths(group: click.Group, prefix: str) -> list[str]:
        out = []
        for name, command in group.commands.items():
            if command.hidden:
                continue
            out.append(f"{prefix} {name}")
            if isinstance(command, click.Group):
                out += paths(command, f"{prefix} {name}")
        return out

    commands = paths(cli, "unified-jobs")
    assert {"unified-jobs start", "unified-jobs generate worker", "unified-jobs doctor"} <= set(commands)
    text = generator.render()
    for path in commands:
        assert f"\n## `{path}`\n" in text
        assert f"Usage: {path} " in text


def test_the_output_does_not_depend_on_the_terminal(
    generator: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    wide = generator.render()
    monkeypatch.setenv("COLUMNS", "40")
    assert generator.render() == wide
