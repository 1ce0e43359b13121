"""What ``blobfs`` imports and builds to run one command.

The parser is built for the subcommand on the command line only (``blobfs mount`` does not
import the trust, registry-command or progress modules); these tests check that this is
invisible: every subcommand parses and helps exactly as in the whole parser, the tables that
name the subcommands agree with the parser, and help or unknown words still get the whole one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blobfs.cli import _main

REPO = Path(__file__).resolve().parent.parent


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_command_tables_match_the_parser() -> None:
    full = _main.build_parser()
    names = tuple(_subparsers(full))
    assert full.get_default("commands") == names
    assert _main._all_commands() == names  # same names, same order (help lists them so)
    for name in names:
        partial = _main.build_parser(name)
        assert tuple(_subparsers(partial)) == (name,) or name in _main._GROUPS
        assert partial.get_default("commands") == names


@pytest.mark.parametrize("name", _main._all_commands())
def test_each_subcommand_parses_and_helps_as_in_the_whole_parser(name: str) -> None:
    full = _subparsers(_main.build_parser())[name]
    partial = _subparsers(_main.build_parser(name))[name]
    assert partial.format_help() == full.format_help()
    assert partial.format_usage() == full.format_usage()

    def described(p: argparse.ArgumentParser) -> list[tuple[object, ...]]:
        return [
            (a.option_strings, a.dest, a.nargs, a.default, a.choices, a.required, type(a))
            for a in p._actions
        ]

    assert described(partial) == described(full)
    assert partial.get_default("handler") is not None


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["ls", "A"], "ls"),
        (["--output", "json", "ls", "A"], "ls"),
        (["--cache-dir", "mount", "status", "M"], "status"),  # an option's value is no command
        (["-vv", "--offline", "mount", "R", "M", "-o", "ro"], "mount"),
        (["mount", "-h"], "mount"),
        (["--config=x.toml", "keygen"], "keygen"),
        (["-h", "mount"], None),  # the top-level help lists every command
        (["--version"], None),
        ([], None),
        (["lss", "A"], None),  # a typo: argparse names the choices
        (["--output", "yaml", "ls"], None),  # a bad value: argparse reports it
        (["ref", "/mnt"], None),  # perhaps the mount(8) helper form
    ],
)
def test_the_command_is_found_only_when_it_is_sure(argv: list[str], command: str | None) -> None:
    assert _main._command_of(argv) == command


def test_help_and_errors_still_come_from_the_whole_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _main.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in _main._all_commands():
        assert name in out
    assert _main.main(["lss"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'lss'" in err
    assert "keygen" in err  # the choices listed are all of them


def _imported_by(argv: list[str]) -> set[str]:
    """Modules loaded after running ``blobfs ARGV`` in a fresh interpreter (not the names
    blocked with None)."""
    code = (
        "import json, sys\n"
        "from blobfs.cli import main\n"
        f"rc = main({argv!r})\n"
        "print(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    modules: list[str] = json.loads(proc.stdout.splitlines()[-1])
    return set(modules)


NOT_FOR_MOUNT = (
    "blobfs.cli._trust_cmds",
    "blobfs.cli._registry_cmds",
    "blobfs.cli._archive_cmds",
    "blobfs.cli._cp",
    "blobfs.cli._create_cmd",
    "blobfs.cli._login",
    "blobfs.cli._progress",
    "blobfs.policy",
    "cryptography",
    "httpx._main",
    "rich",
    "click",
    "pygments",
)


def test_mount_imports_only_what_it_needs(tmp_path: Path) -> None:
    """``blobfs mount`` (here its argument checking: the archive does not exist) and
    ``blobfs umount`` load neither the trust modules nor httpx's command-line client."""
    for argv in (
        ["mount", str(tmp_path / "none"), str(tmp_path)],
        ["umount", str(tmp_path / "none")],
    ):
        modules = _imported_by(argv)
        assert "blobfs.cli._mount_cmds" in modules
        assert not [m for m in modules if m.startswith(NOT_FOR_MOUNT)], argv


def test_other_commands_still_load_their_modules(tmp_path: Path) -> None:
    modules = _imported_by(["keygen", "--help"])
    assert "blobfs.cli._trust_cmds" in modules
    modules = _imported_by(["ls", str(tmp_path / "none")])
    assert "blobfs.cli._archive_cmds" in modules
    assert "blobfs.cli._trust_cmds" not in modules
