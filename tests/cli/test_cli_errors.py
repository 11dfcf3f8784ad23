"""CLI polish: user mistakes are one line with exit code 2, and every verb's help and output."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlrec.cli import build_parser, main

# Each case is a mistake a user makes on the command line, with a fragment of the message.
# All of them fail before any real work starts (no data is read, nothing is trained).
MISTAKES: list[tuple[list[str], str]] = [
    ([], "required: COMMAND"),
    (["nope"], "invalid choice: 'nope'"),
    (["train", "--timesteps", "abc"], "invalid int value: 'abc'"),
    (["train", "--timesteps", "0"], "--timesteps"),
    (["train", "--env", "no-such-preset", "--log-dir", "{tmp}/logs"], "no-such-preset"),
    (["train", "--agent", "no-such-agent", "--log-dir", "{tmp}/logs"], "no-such-agent"),
    (["train", "--resume"], "--run-name"),
    (["evaluate", "{tmp}"], "not a run directory"),
    (["evaluate", "{tmp}/missing"], "not a run directory"),
    (["evaluate", "{tmp}", "--episodes", "0"], "--episodes"),
    (["sensitivity", "{tmp}"], "not a run directory"),
    (["sensitivity", "{tmp}/missing"], "not a run directory"),
    (["sensitivity", "{tmp}", "--points", "-1"], "--points"),
    (["sensitivity", "{tmp}", "--episodes", "0"], "--episodes"),
    (["sensitivity", "{tmp}", "--points", "many"], "invalid int value: 'many'"),
    (["data", "prepare", "--preset", "nope", "--input", "x", "--out", "y"], "--preset"),
    (
        ["data", "prepare", "--preset", "taobao", "--input", "{tmp}/no.csv", "--out", "{tmp}/d"],
        "no such file",
    ),
    (
        ["data", "prepare", "--preset", "taobao", "--input", "{tmp}/file.txt", "--out", "{tmp}/d"],
        "expects 5",
    ),
    (
        [
            "data",
            "prepare",
            "--preset",
            "taobao",
            "--input",
            "{tmp}/file.txt",
            "--out",
            "{tmp}/d",
            "--session-gap",
            "soon",
        ],
        "--session-gap",
    ),
    (
        [
            "data",
            "prepare",
            "--preset",
            "taobao",
            "--input",
            "{tmp}/file.txt",
            "--out",
            "{tmp}/d",
            "--split",
            "0.5,0.5",
        ],
        "--split",
    ),
    (
        [
            "data",
            "prepare",
            "--preset",
            "taobao",
            "--input",
            "{tmp}/file.txt",
            "--out",
            "{tmp}/busy",
        ],
        "not a PreparedDataset",
    ),
    (["data", "stats", "{tmp}/missing"], "no such dataset directory"),
    (["data", "stats", "{tmp}"], "not a prepared dataset"),
    (["data", "synth", "--out", "{tmp}/s", "--users", "0"], "--users"),
    (["data", "synth", "--out", "{tmp}/file.txt", "--users", "5"], "is a file"),
    (["fit", "{tmp}/missing", "--out", "{tmp}/s"], "no such dataset directory"),
    (["fit", "{tmp}/missing", "--out", "{tmp}/busy"], "not a SimModel"),
    (["sim", "validate", "{tmp}", "--data", "{tmp}"], "missing sim_model.json"),
    (["sim", "validate", "{tmp}", "--data", "{tmp}", "--sessions", "0"], "--sessions"),
    (["env", "build", "no-such-preset"], "no-such-preset"),
    (["env", "rollout", "synthetic", "--episodes", "0"], "--episodes"),
    (["pretrain", "{tmp}/missing", "--out", "{tmp}/e"], "no such dataset directory"),
    (["pretrain", "{tmp}", "--out", "{tmp}/e", "--config", "{tmp}/no.yaml"], "no such file"),
    (["pretrain", "{tmp}/missing", "--out", "{tmp}/e", "--epochs", "-1"], ">= 0"),
    (["pretrain", "{tmp}/missing", "--out", "{tmp}/busy"], "not an encoder checkpoint"),
    (["encoder", "eval", "{tmp}", "--data", "{tmp}/missing"], "no such dataset directory"),
    (["ope", "bandit", "--logs", "{tmp}/no.csv", "--policy", "random"], "no such file"),
    (["ope", "bandit", "--logs", "{tmp}/file.txt", "--policy", "random"], "missing column"),
    (["ope", "bandit", "--logs", "{tmp}/no.csv", "--policy", "bogus"], "--policy 'bogus'"),
    (["ope", "sessions", "--simulate", "no-such-preset", "--target", "random"], "no-such-preset"),
    (["ope", "sessions", "--data", "{tmp}", "--target", "random"], "not a prepared dataset"),
    (["ope", "sessions", "--data", "{tmp}", "--target", "bogus"], "unknown base 'bogus'"),
    (
        ["ope", "sessions", "--simulate", "synthetic", "--target", "random", "--sessions", "0"],
        "--sessions",
    ),
    (
        ["ope", "sessions", "--simulate", "synthetic", "--data", "{tmp}", "--target", "random"],
        "not allowed",
    ),
    (
        ["ope", "replay", "--data", "{tmp}/missing", "--policy", "random"],
        "no such dataset directory",
    ),
    (["ope", "replay", "--data", "{tmp}", "--policy", "bogus"], "unknown base 'bogus'"),
    (["ope", "replay", "--data", "{tmp}", "--policy", "random", "--k", "0"], "--k"),
    (["quickstart", "--timesteps", "0", "--out", "{tmp}/q"], "timesteps"),
    (["quickstart", "--out", "{tmp}/file.txt", "--tiny"], "not a directory"),
    (["report", "{tmp}/missing"], "not a directory"),
    (["report", "{tmp}", "--out", "{tmp}/file.txt"], "is a file"),
    (["train", "--log-dir", "{tmp}/file.txt"], "is a file"),
    (["report", "{tmp}"], "nothing to report"),
]


def run_cli(argv: list[str]) -> int:
    """``rlrec ARGV`` in-process; argparse's own exits (bad flags, --help) return their code."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


@pytest.mark.parametrize(
    ("argv", "message"), MISTAKES, ids=[" ".join(argv) or "none" for argv, _ in MISTAKES]
)
def test_mistake_is_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file.txt").write_text("x\n")
    busy = tmp_path / "busy"  # a directory of someone else's files: never to be replaced
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me\n")
    code = run_cli([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("rlrec"), err
    assert "Traceback" not in err and message in err
    assert (tmp_path / "file.txt").read_text() == "x\n"
    assert (busy / "notes.txt").read_text() == "keep me\n"


def leaf_parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every verb's parser (``data prepare``, ``train``, ...) with its full name."""

    def walk(
        name: str, parser: argparse.ArgumentParser
    ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield name, parser
        for action in subs:
            for verb, child in action.choices.items():
                yield from walk(f"{name} {verb}".strip(), child)

    yield from walk("", build_parser())


LEAVES = dict(leaf_parsers())


def test_every_verb_is_found() -> None:
    verbs = {
        "train",
        "data prepare",
        "ope replay",
        "encoder eval",
        "report",
        "convert-run",
        "sensitivity",
        "analyze",
        "churn",
        "export",
        "serve",
        "ope served",
        "sweep",
        "finetune",
    }
    assert verbs <= set(LEAVES)
    assert len(LEAVES) == 25


@pytest.mark.parametrize("verb", sorted(LEAVES))
def test_help_lists_defaults_and_json(verb: str) -> None:
    parser = LEAVES[verb]
    text = parser.format_help()
    # A default is shown wherever there is one; required options and flags show none.
    assert "(default: None)" not in text and "(default: False)" not in text
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert action.help and "default" in parser._get_formatter()._get_help_string(action)
    # Every verb reports numbers or paths: each has --json.
    assert "--json" in text


AUTO_SIZED = {"d_model", "n_layers", "n_heads", "pretrain_epochs", "finetune_epochs", "batch_size"}


def test_pretrain_help_defaults_are_the_config_defaults() -> None:
    from rlrec.models.encoder import EncoderConfig
    from rlrec.models.pretrain import PretrainConfig

    defaults = {
        f.name: f.default
        for cls in (EncoderConfig, PretrainConfig)
        for f in dataclasses.fields(cls)
    }
    checked = 0
    for action in LEAVES["pretrain"]._actions:
        if action.dest in defaults and action.help:
            shown = re.search(r"\(default: ([^)]+)\)", action.help)
            assert shown, action.dest
            if action.dest in AUTO_SIZED:  # chosen from the data (rlrec.models.pretrain)
                assert shown.group(1).startswith("auto, from the data size"), action.dest
            else:
                assert shown.group(1) == str(defaults[action.dest]), action.dest
            checked += 1
    assert checked == 14


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["ope", "sessions", "--help"]) == 0
    assert "default: greedy_supervised,tau=1,eps=0.3" in " ".join(capsys.readouterr().out.split())
