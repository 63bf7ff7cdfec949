"""The commands the README and docs/ show still run as written.

docs/recipes.md gives, for every row of its ablation and CV tables, the command that produced it (issue 3), and the
README's synopsis names each command's options. These tests read the Markdown itself: every concrete ``covseg ...``
command in it must parse with covseg's own parser and, for ``train`` / ``cv`` / ``compare``, its ``KEY=VALUE``
overrides must be accepted by the recipe (an option renamed or removed shows up here, not in a reader's shell); every
``--option`` in the README's synopsis must exist; and every long option a command takes must be named in the README.
Nothing is trained or read from disk beyond the Markdown and the packaged recipes.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
import shlex
from pathlib import Path

import pytest

from covseg import cli
from covseg.errors import CovsegError

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Options the docs name only as the form a past screen ran, saying so beside it ("the option's first form"):
# train.progressive_epochs=80 is today's train.progressive_fraction=0.667 (docs/recipes.md, session 19).
HISTORICAL_OPTIONS = ("train.progressive_epochs=",)

# Placeholders the docs use inside otherwise concrete commands, and a value each stands for.
PLACEHOLDERS = ((re.compile(r"cv:K\b"), "cv:0"), (re.compile(r"=S\b"), "=0"),
                (re.compile(r"--task (TASK|T)\b"), "--task binary"), (re.compile(r"--jobs N\b"), "--jobs 2"))

# Synopsis notation, not a command: optional parts, alternatives, elisions.
SYNOPSIS_MARKS = ("[", "|", "…", "...", "KEY=VALUE", "OVERRIDES")


def _commands(text: str) -> list[str]:
    """The ``covseg ...`` commands in a Markdown text: inline code spans, also those wrapped over lines (their
    whitespace collapsed), and lines of fenced blocks (a trailing ``# comment`` dropped)."""
    fences = re.compile(r"```[a-z]*\n(.*?)```", re.S)
    found = [" ".join(span.split()) for span in re.findall(r"`(covseg\s[^`]+)`", fences.sub("", text))]
    for block in fences.findall(text):
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("covseg "):
                found.append(line.split(" #")[0].strip())
    return found


def _concrete(command: str) -> str | None:
    """The command with its placeholders filled in, or None for synopsis notation and historical options."""
    if any(mark in command for mark in SYNOPSIS_MARKS) or any(old in command for old in HISTORICAL_OPTIONS):
        return None
    for pattern, value in PLACEHOLDERS:
        command = pattern.sub(value, command)
    return command


def _documented_commands() -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for doc in DOCS:
        for command in _commands(doc.read_text(encoding="utf-8")):
            concrete = _concrete(command)
            if concrete is not None:
                seen.setdefault(concrete, doc.name)
    return sorted((doc, command) for command, doc in seen.items())


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _parse(argv: list[str]) -> tuple[argparse.Namespace | None, str]:
    """covseg's own parsing of ``argv`` (overrides anywhere among the options), and argparse's message if refused."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return cli._parse_args(cli.build_parser(), argv), ""
    except SystemExit:
        lines = err.getvalue().strip().splitlines()
        return None, lines[-1] if lines else "exited without a message"


# what a fragment quoted in prose (`covseg cv --seeds 0 1 2`) leaves to the sentence around it, and a stand-in
STAND_INS = {"-o/--output": ["-o", "OUT"], "--model": ["--model", "MODEL"]}


def _completed(argv: list[str], message: str) -> list[str] | None:
    """``argv`` with stand-ins for the required arguments argparse's ``message`` says are missing (positionals right
    after the command, options at the end), or None where the message is about something else."""
    missing = re.match(r".*the following arguments are required: (.*)$", message)
    if not missing:
        return None
    names = [name.strip() for name in missing.group(1).split(",")]
    positionals = [name.upper() for name in names if not name.startswith("-")]
    options = [part for name in names if name.startswith("-") for part in STAND_INS.get(name, [name, "X"])]
    return [argv[0], *positionals, *argv[1:], *options]


def test_the_docs_hold_many_concrete_commands():
    commands = [command for _, command in _documented_commands()]
    assert len(commands) > 100  # the extraction finds the docs' commands, so the tests below check something
    assert "covseg train --recipe default --task binary --split cv:0 -o RUN train.mixup_alpha=0.2" in commands


@pytest.mark.parametrize("doc,command", _documented_commands())
def test_a_documented_command_parses_and_its_overrides_are_accepted(doc, command):
    argv = shlex.split(command)[1:]
    if argv[0] == "bench":  # its own parser: its options must be bench's
        unknown = [option for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", command)
                   if option not in _bench_options()]
        assert not unknown, f"{doc}: `{command}`: covseg bench has no {', '.join(unknown)}"
        return
    args, message = _parse(argv)
    completed = _completed(argv, message) if args is None else None
    if completed is not None:  # a fragment: checked whole with stand-ins for what the sentence supplies
        args, message = _parse(completed)
    if args is None:
        # an option left without its value at the end of a fragment (`covseg train --resume`): nothing to check
        assert message.endswith(("expected one argument", "expected at least one argument")) and \
            argv[-1].startswith("--"), f"{doc}: `{command}`: {message}"
        return
    if args.command in ("train", "cv", "compare") and not getattr(args, "resume", None):
        try:
            cli._recipe_config(args)
        except CovsegError as refused:
            pytest.fail(f"{doc}: `{command}`: {refused}")


def _synopsis_lines() -> list[str]:
    """The README's command synopsis: the fenced block under '## Commands', continuation lines joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Commands\s*```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no '## Commands' block"
    return block.group(1).replace("\\\n", " ").splitlines()


@functools.lru_cache(maxsize=1)
def _bench_options() -> frozenset[str]:
    from covseg.bench import main as bench_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        bench_main(["--help"], command="covseg bench")
    return frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", out.getvalue()))


def test_every_option_in_the_readme_synopsis_exists():
    parsers = _subparsers()
    checked = 0
    for line in _synopsis_lines():
        match = re.match(r"covseg ([a-z-]+)\s", line)
        if not match:
            continue
        name = match.group(1)
        assert name in parsers, f"the synopsis names a command covseg lacks: {line}"
        known = (_bench_options() if name == "bench" else
                 {option for action in parsers[name]._actions for option in action.option_strings})
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line.split(" #")[0]):
            assert option in known, f"covseg {name} has no {option} (README synopsis: {line.strip()})"
            checked += 1
    assert checked > 40


def test_every_long_option_is_named_in_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)(?![\w-])", readme))  # whole options: not --seed in --seeds
    missing = [f"covseg {name} {option}" for name, parser in _subparsers().items() for action in parser._actions
               for option in action.option_strings
               if option.startswith("--") and option not in ("--help", "--output") and option not in named]
    assert not missing, f"not named in README.md: {', '.join(missing)}"


def test_a_renamed_override_in_a_documented_command_is_caught():
    """The checks above would flag a doc that kept an option's old name (here the historical one, unexcused), also
    in a fragment and in a span wrapped over two lines."""
    args, _ = _parse(shlex.split("covseg cv --recipe default --task binary -o OUT train.progressive_epochs=80")[1:])
    with pytest.raises(CovsegError, match="progressive_epochs"):
        cli._recipe_config(args)
    assert _concrete("covseg train --split cv:K -o R train.seed=S") == "covseg train --split cv:0 -o R train.seed=0"
    assert _concrete("covseg train [--recipe R]") is None
    assert _commands("see `covseg cv --recipe default\n--folds 5 train.bogus=1` here") == [
        "covseg cv --recipe default --folds 5 train.bogus=1"]
    argv = shlex.split("covseg cv --folds 5 train.bogus=1")[1:]
    _, message = _parse(argv)
    assert _completed(argv, message) == ["cv", "--folds", "5", "train.bogus=1", "-o", "OUT"]
    args, _ = _parse(_completed(argv, message))
    with pytest.raises(CovsegError, match="bogus"):
        cli._recipe_config(args)
    argv = shlex.split("covseg predict --model A --tta")[1:]
    assert _completed(argv, _parse(argv)[1]) == ["predict", "INPUTS", "--model", "A", "--tta", "-o", "OUT"]
