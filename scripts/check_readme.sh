#!/usr/bin/env bash
# Run README.md as a newcomer would: clone the repository (its last commit) into a temporary folder, then run
# every command of the README's ```bash and ```console blocks there, in order, in one shell (so `source` and
# `cd` carry over), and report each command's exit status.
#
#   bash scripts/check_readme.sh                 # scripts/setup.sh installs everything, as for a user
#   bash scripts/check_readme.sh --venv .venv    # reuse an installed environment's packages (no downloads)
#   bash scripts/check_readme.sh --list          # only print the commands it would run
#   options: --skip REGEX (skip matching commands, reported as skipped), --keep (keep the clone)
#
# A command passes when it exits 0, or, where the README shows it printing `error: ...`, when it prints an
# `error:` line; a Python traceback fails it either way. In ```console blocks the commands are the `$ ` lines
# (with their `\` continuation lines); the other lines are output. ```text blocks are not run.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv="" skip="" keep=0 list=0
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv=$(cd "$2" && pwd); shift 2 ;;
    --skip) skip="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --list) list=1; shift ;;
    *) echo "usage: $0 [--venv PATH] [--skip REGEX] [--keep] [--list]" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d "${TMPDIR:-/tmp}/check_readme.XXXXXX")
[ "$keep" = 1 ] || trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/flashdecode"
cd "$work/flashdecode"

# The README's commands -> one bash script that runs them in order, logging each one's output and status.
python3 - "$work" "$skip" "$list" <<'EOF'
import re, shlex, sys
work, skip, list_only = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
commands = []  # (command, expects_error)
block, lines = None, []
for line in open("README.md").read().splitlines() + [""]:
    fence = re.match(r"^```(\w*)", line)
    if fence and block is None:
        block, lines = fence.group(1) or "plain", []
        continue
    if fence and block is not None:
        if block == "bash":
            cmd = ""
            for l in lines:
                cmd = cmd + "\n" + l if cmd else l
                if not cmd.rstrip().endswith("\\"):
                    if cmd.strip() and not cmd.lstrip().startswith("#"):
                        commands.append([cmd, False])
                    cmd = ""
        elif block == "console":
            cmd = None
            for l in lines:
                if cmd is not None and cmd.rstrip().endswith("\\"):
                    cmd += "\n" + l
                elif l.startswith("$ "):
                    cmd = l[2:]
                    commands.append([cmd, False])
                    continue
                elif commands and l.startswith("error:"):
                    commands[-1][1] = True  # the README shows this command failing
                    continue
                else:
                    continue
                commands[-1][0] = cmd
        block = None
        continue
    if block is not None:
        lines.append(line)

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
EOF
[ "$list" = 1 ] && exit 0

if [ -n "$venv" ]; then  # a venv of our own that sees the given one's packages; setup.sh then has nothing to fetch
  python3 -m venv .venv
  site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  base=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$base" > "$site/_base_packages.pth"
  .venv/bin/python -m pip uninstall -q -y setuptools >/dev/null 2>&1 || true  # the given env's (newer) one builds
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
  printf '#!%s\nfrom torch.distributed.run import main\nmain()\n' "$PWD/.venv/bin/python" > .venv/bin/torchrun
  chmod +x .venv/bin/torchrun
fi

start=$(date +%s)
env -u VIRTUAL_ENV PATH="/usr/local/bin:/usr/bin:/bin" bash "$work/run.sh" </dev/null || true
rc=0
python3 - "$work" "$(( $(date +%s) - start ))" <<'EOF' || rc=$?
import ast, re, sys
work, total = sys.argv[1], sys.argv[2]
status = {}
for line in open(f"{work}/status"):
    i, what, t, *rc = line.split()
    status.setdefault(int(i), {})[what] = (float(t), int(rc[0]) if rc else None)
failed = ran = 0
for line in open(f"{work}/commands.txt"):
    i, expect, mode, cmd = line.rstrip("\n").split("\t", 3)
    i, cmd = int(i), ast.literal_eval(cmd).replace("\n", " ")
    if mode == "skip":
        print(f"SKIP  [{i}] {cmd}")
        continue
    s = status.get(i, {})
    if "end" not in s:
        print(f"FAIL  [{i}] (did not finish) {cmd}")
        failed += 1
        continue
    ran += 1
    rc, secs = s["end"][1], s["end"][0] - s["start"][0]
    out = open(f"{work}/log.{i}", errors="replace").read()
    traceback = "Traceback (most recent call last)" in out
    ok = not traceback and (re.search(r"^error:", out, re.M) is not None if expect == "error" else rc == 0)
    failed += not ok
    print(f"{'ok  ' if ok else 'FAIL'}  [{i}] exit {rc}, {secs:.1f} s: {cmd}")
    if not ok:
        print("      " + "\n      ".join(out.strip().splitlines()[-8:]))
print(f"{ran} commands run, {failed} failed, in {total} s")
sys.exit(1 if failed else 0)
EOF
echo "files the README's commands left that git does not ignore:"
git status --porcelain --untracked-files=normal | sed 's/^/  /'
exit $rc
