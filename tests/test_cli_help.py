"""What a newcomer sees first: `--version`, and help text that names values the way click/ffmpeg users expect."""
import re

import pytest
from typer.testing import CliRunner

import flashdecode
from flashdecode.cli import app

COMMANDS = ["decode", "info", "encode", "models", "train", "eval", "bench"]


def run(*args):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "120", "TERM": "dumb"})


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"flashdecode {flashdecode.__version__}"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_no_type_tags(command):
    result = run(*([command] if command else []), "--help")
    assert result.exit_code == 0, result.output
    assert not re.search(r"<(str|bool|int|float|Path)>", result.output), result.output
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "{" not in usage  # INPUT, not typer's {input}


def test_decode_help_names_its_input_and_values():
    out = run("decode", "--help").output
    assert re.search(r"Usage: flashdecode decode \[OPTIONS\] INPUT", out)
    assert re.search(r"--crf\s+INTEGER", out) and re.search(r"--raw\s+--no-raw\s+Latents", out)


def test_train_recipe_uses_real_options():
    out = run("train", "--help").output
    assert "--data" not in out and "flashdecode train /videos" in out
