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
# `error:` line; a Python traceback fails it either way. Which lines are commands: scripts/readme_commands.py.
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
python3 scripts/readme_commands.py "$work" "$skip" "$list"
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
