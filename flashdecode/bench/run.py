"""The parent process of `flashdecode bench`: every case in a fresh interpreter, in order, rows kept as they come."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..latent_spaces import pixel_frames
from .cases import CHILD_ENV, ROW_MARK, Case, failed_row
from .report import add_ratios, write_json

def run_case_process(case: Case, timeout: float | None = None) -> dict:
    """Run one case in a fresh interpreter and return its row (an error row if it fails)."""
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds flashdecode/
    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "flashdecode.bench", "--case", json.dumps(asdict(case))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return failed_row(case, error=f"timed out after {timeout:g} s (--timeout)")
    for line in proc.stdout.splitlines():
        if line.startswith(ROW_MARK):
            return json.loads(line[len(ROW_MARK):])
    if proc.returncode == -9:  # SIGKILL: on Linux almost always the kernel's OOM killer
        return failed_row(case, error="case process killed (SIGKILL; out of memory?)")
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return failed_row(case, error=f"case process exited with code {proc.returncode}: {tail}")


def too_long(case: Case, rows: list[dict]) -> str | None:
    """Why to skip a long case: a shorter run of the same decoder says one run would pass the budget."""
    done = [r for r in rows if r["decoder"] == case.decoder and r["res"] == case.res and r.get("ms_per_latent_frame")
            and r["dtype"] == case.dtype and r.get("compile", "off") == case.compile
            and r["latent_frames"] < case.latent_frames]
    if not done:
        return None
    estimate = max(r["ms_per_latent_frame"] for r in done) * case.latent_frames / 1e3
    if estimate > case.budget_s:
        return f"skipped: one run would take ~{estimate:.0f} s (> --budget-s {case.budget_s:.0f})"
    return None



@dataclass
class Bench:
    """The parent process: runs every case in its own process, in order, and keeps the rows."""

    cases: list[Case]
    timeout: float | None = None
    json_path: Path | None = None
    rows: list[dict] = field(default_factory=list)

    def run(self, progress=None) -> list[dict]:
        for i, case in enumerate(self.cases, 1):
            what = (f"[{i}/{len(self.cases)}] {case.decoder} {case.dtype}"
                    + (f" compile={case.compile}" if case.kind == "flashdecode" and case.compile != "off" else "")
                    + f" {case.res} {pixel_frames(case.latent_frames)} frames")
            skip = too_long(case, self.rows)
            if progress:
                progress(f"{what}: {skip}" if skip else f"{what} ...")
            started = time.perf_counter()
            row = failed_row(case, skipped=skip) if skip else run_case_process(case, self.timeout)
            self.rows.append(row)
            add_ratios(self.rows)
            if self.json_path:  # after every case: a run cut short still leaves its results
                write_json(self.json_path, self.rows)
            if progress and not skip:
                e2e = ""
                if row.get("e2e_fps"):
                    e2e = f", end to end ({row['output']}) {row['e2e_fps']:.2f} FPS"
                elif row.get("e2e_error"):
                    e2e = f", end to end ({row['output']}) failed: {row['e2e_error']}"
                progress(f"{what}: " + (row.get("error") or f"{row['fps']:.2f} FPS{e2e}, {row['runs']} runs, "
                                        f"{time.perf_counter() - started:.0f} s"))
        return self.rows

