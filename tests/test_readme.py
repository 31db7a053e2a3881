"""The README's commands work as written: every `linewatch …` line in its code blocks parses with
linewatch's own argument parser, every command and option its commands table names exists (and
its `--help` prints), and every `make` target it names is in the Makefile."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from services.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PLACEHOLDER_INTS = {"N", "M"}


def code_block_commands() -> list[list[str]]:
    """``linewatch`` command lines of the README's bash blocks (continuations joined, comments and
    leading ``VAR=value`` assignments dropped), as argument lists after ``linewatch``."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            if words and words[0].endswith("linewatch"):
                commands.append(words[1:])
    return commands


def table_commands() -> list[str]:
    """The first cell of each row of the commands table."""
    table = README.split("## Commands", 1)[1].split("\n\n", 2)[1]
    return [row.split("|")[1].strip() for row in table.splitlines()[2:] if row.startswith("|")]


def subparsers(parser: object) -> dict[str, object]:
    for action in getattr(parser, "_actions", []):
        if action.__class__.__name__ == "_SubParsersAction":
            return dict(action.choices)
    return {}


def test_the_readme_has_code_blocks_with_commands() -> None:
    assert len(code_block_commands()) >= 6
    assert len(table_commands()) >= 10


@pytest.mark.parametrize("argv", code_block_commands(), ids=lambda argv: " ".join(argv)[:60])
def test_each_command_line_in_a_code_block_parses(argv: list[str]) -> None:
    build_parser().parse_args(argv)  # exits (SystemExit) on an unknown command, option or value


@pytest.mark.parametrize("cell", table_commands(), ids=lambda cell: cell[:50])
def test_each_command_of_the_table_exists_with_its_options(
    cell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in re.findall(r"`([^`]*)`", cell):
        words = command.split()
        if not words or words[0] != "linewatch":
            assert words and words[0] == "make", command
            continue
        parser: object = build_parser()
        path: list[str] = []
        for word in words[1:]:
            choices = subparsers(parser)
            name = word.split("|")[0]
            if name in choices:
                parser, path = choices[name], [*path, name]
            else:
                break
        assert path, f"{command}: no such command"
        known = {s for action in getattr(parser, "_actions", []) for s in action.option_strings}
        for option in re.findall(r"(--[a-z][a-z-]*)", command):
            assert option in known, f"{command}: {' '.join(path)} has no option {option}"
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([*path, "--help"])
        assert exit_.value.code == 0
        assert "usage: linewatch" in capsys.readouterr().out


def test_every_make_target_it_names_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    named = set(re.findall(r"`make ([a-z][a-z-]*)", README)) | set(
        re.findall(r"^make ([a-z][a-z-]*)", README, re.M)
    )
    assert named, "the README names no make target"
    assert named <= targets, f"not in the Makefile: {sorted(named - targets)}"
