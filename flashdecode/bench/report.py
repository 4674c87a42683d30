"""Rows into what people read: ratios between rows, the machine, the JSON, the table and the chart."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from ..errors import FlashdecodeError
from .cases import CHILD_ENV

def add_ratios(rows: list[dict]) -> list[dict]:
    """Speed-up and memory ratio of each FlashDecoder or family row against the baseline run on the same clip (same
    dtype first: fp8 rows pair with the bf16 baseline), end-to-end against decode-only FPS, and each row's
    peak memory against its own shortest length."""
    def ok(r):
        return r.get("fps") is not None

    def same_clip(a, b):
        return all(a[k] == b[k] for k in ("height", "width", "latent_frames", "device"))

    def config(r):
        return r["decoder"], r["res"], r["device"], r["dtype"], r.get("compile", "off")

    for r in rows:
        if r["kind"] != "baseline":  # FlashDecoder and the streamed families, against diffusers' own call
            bases = [b for b in rows if b["kind"] == "baseline" and ok(b) and ok(r) and same_clip(b, r)]
            bases.sort(key=lambda b: (b["dtype"] != r["dtype"], b["dtype"] != "bfloat16", b["model"] != r["latent_space"]))
            base = bases[0] if bases else None
            r["baseline"] = base and base["decoder"]
            r["speedup_vs_baseline"] = base and base["total_ms"] / r["total_ms"]
            r["mem_ratio_vs_baseline"] = base and base["peak_mem_bytes"] / r["peak_mem_bytes"]
            if r.get("e2e_fps") and ok(r):
                r["e2e_vs_fps"] = r["e2e_fps"] / r["fps"]
        shortest = [s for s in rows if ok(s) and config(s) == config(r)]
        if ok(r) and len(shortest) > 1:
            first = min(shortest, key=lambda s: s["latent_frames"])
            r["mem_vs_shortest"] = r["peak_mem_bytes"] / first["peak_mem_bytes"]
    return rows



def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(rows: list[dict]) -> dict:
    """Where the numbers come from (no host name)."""
    import torch

    from .. import __version__

    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    names = sorted({r["device_name"] for r in rows if r.get("device_name") and r.get("device") == "cuda"})
    return dict(cpu=cpu_model(), cores=os.cpu_count(), torch_threads=next((r["threads"] for r in rows if "threads" in r), None),
                torch=torch.__version__, cuda=torch.version.cuda, device_name=", ".join(names) or cpu_model(),
                python=platform.python_version(), os=f"{platform.system()} {platform.release()}",
                flashdecode=__version__, diffusers=installed("diffusers"), av=installed("av"),
                malloc_mmap_threshold=CHILD_ENV["MALLOC_MMAP_THRESHOLD_"])


def write_json(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"machine": machine_info(rows), "rows": rows}, indent=2) + "\n")
    tmp.replace(path)



# -- presenting ----------------------------------------------------------------------------------------


SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "fp8": "fp8"}


def display_name(row: dict, dtype: bool = False) -> str:
    """'FlashDecoder-XL' (with dtype=True: 'FlashDecoder-XL fp8 compiled'), 'Wan2.2 conv VAE, vae.decode' (diffusers'
    own call), 'Wan2.2 conv VAE, streamed' (flashdecode's stream of the same decoder), 'TAEW2.2 tiny'."""
    if row["kind"] == "flashdecode":
        name = f"FlashDecoder-{row['model'].upper()}"
        if dtype:
            name += f" {SHORT_DTYPES.get(row['dtype'], row['dtype'])}"
        compile_mode = row.get("compile", "off")
        if compile_mode == "on" or (compile_mode == "auto" and row.get("compiled")):
            name += " compiled"
        return name
    suffix = f" {SHORT_DTYPES.get(row['dtype'], row['dtype'])}" if dtype else ""
    if row["kind"] == "family":
        model = row["model"]
        if model.endswith("-vae"):
            return f"{model.removesuffix('-vae').capitalize()} conv VAE, streamed{suffix}"
        return f"{model.upper()} tiny{suffix}"
    return f"{row['model'].capitalize()} conv VAE, vae.decode{suffix}"


def series(row: dict) -> tuple:
    """What makes one line of results: decoder, dtype and compile mode."""
    return row["decoder"], row["dtype"], row.get("compile", "off")


def _mb(b) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f} MiB" if b >= 2**20 else f"{b / 2**20:.2f} MiB"


def _num(v, fmt: str, unit: str = "") -> str:
    return "-" if v is None else f"{v:{fmt}}{unit}"


def render_table(rows: list[dict]):
    """The paper's table: one row per decoder and clip, with speed-up and memory ratio against the baseline."""
    from rich.table import Table

    lengths = len({r["latent_frames"] for r in rows}) > 1
    dtypes = len({r["dtype"] for r in rows}) > 1
    outputs = sorted({r["output"] for r in rows if r.get("output")})
    devices = sorted({f"{r['device']} {r['dtype']}" for r in rows})
    table = Table(title=f"flashdecode bench ({', '.join(devices)})", title_justify="left")
    for col in ("decoder", "res", "frames (latent)", "params", "GFLOP/frame", "1st frame", "ms/latent frame\nmedian | p90",
                "FPS", "TFLOP/s", "peak mem\n(before decode)", "speed-up", "less mem"):
        table.add_column(col, justify="left" if col in ("decoder", "res") else "right", no_wrap=col == "decoder")
    if outputs:
        table.add_column(f"end to end FPS\n({', '.join(outputs)}; x FPS)", justify="right")
    if lengths:
        table.add_column("peak vs\nshortest", justify="right")
    notes = []
    for r in rows:
        why = r.get("error") or r.get("skipped")
        base = r["kind"] == "baseline"
        cells = [display_name(r, dtypes) + (" (random weights)" if r["random_weights"] else ""), r["res"],
                 f"{r['frames']} ({r['latent_frames']})"]
        if why:
            notes.append(f"[{len(notes) + 1}] {cells[0]}, {r['res']}, {r['latent_frames']} latent frames: {why}")
            label = "failed" if r.get("error") else "skipped"
            cells += [f"[{'red' if r.get('error') else 'yellow'}]{label} [{len(notes)}][/]"] + [""] * (8 + bool(outputs))
        else:
            cells += [f"{r['params'] / 1e6:.1f} M", _num(r["flops_per_frame"] and r["flops_per_frame"] / 1e9, ",.1f"),
                      f"{r['ttff_ms']:,.0f} ms", f"{r['ms_per_latent_frame']:,.1f} | {r['ms_per_latent_frame_p90']:,.1f}",
                      f"{r['fps']:,.2f}", f"{r['tflops_per_s']:.3f}",
                      f"{_mb(r['peak_mem_bytes'])} ({_mb(r['mem_before_bytes'])})",
                      "baseline" if base else _num(r.get("speedup_vs_baseline"), ".1f", "x"),
                      "baseline" if base else _num(r.get("mem_ratio_vs_baseline"), ".1f", "x")]
            if outputs:
                if r.get("e2e_error"):
                    notes.append(f"[{len(notes) + 1}] {cells[0]}, {r['res']}, end to end: {r['e2e_error']}")
                    cells.append(f"[red]failed [{len(notes)}][/]")
                else:
                    cells.append("-" if not r.get("e2e_fps") else f"{r['e2e_fps']:,.2f} ({r['e2e_vs_fps']:.2f}x)")
        if lengths:
            cells.append(_num(r.get("mem_vs_shortest"), ".3f"))
        table.add_row(*cells)
    if any(r["random_weights"] for r in rows):
        notes.append("random weights: speed and memory do not depend on the weight values.")
    if any(r["kind"] == "baseline" for r in rows):
        notes.append("speed-up = baseline time / this time; less mem = baseline peak / this peak. Diffusers' "
                     "vae.decode returns the clip only once all of it is decoded: its 1st frame = the whole clip.")
    if any(r["kind"] == "family" for r in rows):
        notes.append("streamed: the same decoder through flashdecode's stream, each frame's pixels out as made; tiny: "
                     "a TAEHV decoder (previews). Quality: the conv VAE is the reference; see flashdecode eval.")
    if outputs:
        notes.append("end to end: the same clip through flashdecode.decode_file (latent file -> decode -> convert -> "
                     "encode -> flushed file; raw: rgb24 to /dev/null) in the same process; x FPS = its FPS / FPS.")
    if any(r.get("device") == "cpu" and r.get("fps") for r in rows):
        notes.append("CPU memory: peak RSS of each case's own process, weights and runtime included.")
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table


def check_plot_dependency() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise FlashdecodeError("--plot needs matplotlib; install it with `pip install flashdecode[plot]`") from None


def plot(rows: list[dict], path: Path) -> None:
    """FPS and peak memory per decoder and resolution (or, for --lengths, against video length)."""
    check_plot_dependency()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("fps")]
    decoders = list(dict.fromkeys(series(r) for r in rows))
    dtypes = len({r["dtype"] for r in rows}) > 1
    fig, (ax_fps, ax_mem) = plt.subplots(1, 2, figsize=(11, 4))
    if len({r["latent_frames"] for r in rows}) > 1:
        for d in decoders:
            for res in dict.fromkeys(r["res"] for r in rows if series(r) == d):
                pts = sorted(((r["latent_frames"], r) for r in rows if series(r) == d and r["res"] == res),
                             key=lambda p: p[0])
                label = f"{display_name(pts[0][1], dtypes)} {res}"
                ax_fps.plot([n for n, _ in pts], [r["ms_per_latent_frame"] for _, r in pts], "o-", label=label)
                ax_mem.plot([n for n, _ in pts], [r["peak_mem_bytes"] / 2**20 for _, r in pts], "o-", label=label)
        for ax, ylabel in ((ax_fps, "ms per latent frame"), (ax_mem, "peak memory (MiB)")):
            ax.set_xscale("log")
            ax.set_xlabel("latent frames")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize="small")
        ax_fps.set_yscale("log")  # conv baselines and FlashDecoder are orders of magnitude apart
        ax_mem.set_ylim(0, ax_mem.get_ylim()[1] * 1.15)  # from zero: flat memory is visible as flat
    else:
        resolutions = list(dict.fromkeys(r["res"] for r in rows))
        width = 0.8 / max(len(decoders), 1)
        for i, d in enumerate(decoders):
            by_res = {r["res"]: r for r in rows if series(r) == d}
            xs = [j + i * width for j, res in enumerate(resolutions) if res in by_res]
            label = display_name(next(iter(by_res.values())), dtypes)
            ax_fps.bar(xs, [by_res[res]["fps"] for res in resolutions if res in by_res], width, label=label)
            ax_mem.bar(xs, [by_res[res]["peak_mem_bytes"] / 2**20 for res in resolutions if res in by_res], width,
                       label=label)
        for ax, ylabel in ((ax_fps, "FPS (pixel frames / s)"), (ax_mem, "peak memory (MiB)")):
            ax.set_xticks([j + width * (len(decoders) - 1) / 2 for j in range(len(resolutions))], resolutions)
            ax.set_ylabel(ylabel)
            ax.legend(fontsize="small")
        ax_fps.set_yscale("log")  # conv baselines and FlashDecoder are orders of magnitude apart
    devices = ", ".join(sorted({f"{r['device']} {r['dtype']}" for r in rows}))
    fig.suptitle(f"flashdecode bench ({devices}; random weights)" if any(r["random_weights"] for r in rows)
                 else f"flashdecode bench ({devices})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)

