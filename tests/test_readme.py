"""The README a newcomer follows: which commands scripts/check_readme.sh runs, and that they need nothing
outside the repository. The full run (a fresh clone, every command) is the slow test at the end."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_commands", REPO / "scripts" / "readme_commands.py")
readme_commands = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_commands)


def test_commands_are_bash_lines_and_console_prompts():
    text = "\n".join([
        "```bash", "bash scripts/setup.sh   # set up", "# a comment", "", "flashdecode decode a \\", "  -o b", "```",
        "```console", "$ flashdecode info x", "input  x", "$ flashdecode decode bad", "error: bad is bad",
        "$ echo a \\", "    b", "a b", "```",
        "```text", "torchrun --nproc-per-node 8 -m flashdecode decode /data -o /out/", "```",
        "```python", "print('not run')", "```",
    ])
    assert readme_commands.readme_commands(text) == [
        ("bash scripts/setup.sh   # set up", False), ("flashdecode decode a \\\n  -o b", False),
        ("flashdecode info x", False), ("flashdecode decode bad", True), ("echo a \\\n    b", False)]


def test_readme_needs_only_files_in_the_repository():
    text = (REPO / "README.md").read_text()
    commands = [cmd for cmd, _ in readme_commands.readme_commands(text)]
    assert commands[:2] == [c for c in commands[:2] if c.startswith(("bash scripts/setup.sh", "source .venv"))]
    for cmd in commands:
        assert "shared/" not in cmd, f"a README command needs ../shared, which users do not have: {cmd}"
        for path in re.findall(r"(?:samples|tests/data|weights|scripts)/[\w./-]+", cmd):
            assert (REPO / path).exists(), f"{path} (in the README command {cmd!r}) is not in the repository"
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        assert "../shared" not in block


def test_nothing_cites_a_design_file_the_project_lacks():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    assert (REPO / "docs" / "design.md").exists() and (REPO / "LICENSE").exists()
    name = "DESIGN" + ".md"  # spelled apart so that this file does not cite it
    citing = [f for f in tracked if f.endswith((".py", ".md", ".sh", ".toml"))
              and (REPO / f).exists() and name in (REPO / f).read_text(errors="replace")]
    assert citing == [], f"these cite {name}, which is not in the project (use docs/design.md): {citing}"


@pytest.mark.slow
def test_every_readme_command_runs_in_a_fresh_clone():
    """Minutes: clones the last commit and runs the README's commands with this environment's packages."""
    result = subprocess.run(["bash", str(REPO / "scripts" / "check_readme.sh"), "--venv", sys.prefix,
                             "--skip", "flashdecode bench|scripts/test.sh"], capture_output=True, text=True,
                            timeout=3600, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
