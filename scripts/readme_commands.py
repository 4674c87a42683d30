"""The commands of README.md's ```bash and ```console blocks, in order (used by scripts/check_readme.sh).

    python3 scripts/readme_commands.py WORKDIR [SKIP_REGEX] [1: only list them]

writes WORKDIR/run.sh (all commands in one shell, each one's output to WORKDIR/log.N and its exit status
to WORKDIR/status) and WORKDIR/commands.txt. In ```console blocks the commands are the `$ ` lines (with
their `\\` continuation lines) and a command is expected to fail when the README shows it printing
`error: ...`; in ```bash blocks every line that is not a comment is a command. ```text blocks are not run.
"""
from __future__ import annotations

import re
import sys


def readme_commands(text: str) -> list[tuple[str, bool]]:
    """[(command, shows_an_error)] for every bash/console command of a README, in order."""
    commands: list[list] = []
    block, lines = None, []
    for line in text.splitlines():
        fence = re.match(r"^```(\w*)", line)
        if fence is None:
            if block is not None:
                lines.append(line)
            continue
        if block is None:
            block, lines = fence.group(1) or "plain", []
            continue
        if block == "bash":
            cmd = ""
            for l in lines:
                cmd = f"{cmd}\n{l}" if cmd else l
                if not cmd.rstrip().endswith("\\"):
                    if cmd.strip() and not cmd.lstrip().startswith("#"):
                        commands.append([cmd, False])
                    cmd = ""
        elif block == "console":
            continued = False
            for l in lines:
                if continued:
                    commands[-1][0] += "\n" + l
                elif l.startswith("$ "):
                    commands.append([l[2:], False])
                elif l.startswith("error:") and commands:
                    commands[-1][1] = True
                continued = bool(commands) and (l.startswith("$ ") or continued) and l.rstrip().endswith("\\")
        block = None
    return [(cmd, err) for cmd, err in commands]


def write_runner(commands, work: str, skip: str = "", list_only: bool = False) -> None:
    with open(f"{work}/commands.txt", "w") as f, open(f"{work}/run.sh", "w") as sh:
        sh.write("__ps=(0)\n")
        for i, (cmd, err) in enumerate(commands):
            skipped = bool(skip) and re.search(skip, cmd) is not None
            f.write(f"{i}\t{'error' if err else 'ok'}\t{'skip' if skipped else 'run'}\t{cmd!r}\n")
            if list_only:
                print(f"[{i}] {'(skipped) ' if skipped else ''}{'(shows an error) ' if err else ''}{cmd}")
            if skipped:
                continue
            # Each command's output to its own log; then $? and PIPESTATUS are set back to the previous
            # command's (replayed as a pipeline of its statuses), so `echo ${PIPESTATUS[0]}` works as written.
            sh.write(f'exec >"{work}/log.{i}" 2>&1; echo "{i} start $(date +%s.%N)" >>"{work}/status"\n')
            sh.write('__r=""; for __s in "${__ps[@]}"; do __r+="(exit $__s) | "; done; eval "${__r% | }"\n')
            sh.write(cmd + "\n")
            sh.write(f'__ps=("${{PIPESTATUS[@]}}"); echo "{i} end $(date +%s.%N) ${{__ps[-1]}}" >>"{work}/status"\n')


if __name__ == "__main__":
    work, skip, list_only = sys.argv[1], (sys.argv[2:3] or [""])[0], sys.argv[3:4] == ["1"]
    with open("README.md") as f:
        write_runner(readme_commands(f.read()), work, skip, list_only)
