"""Many latent files -> one output folder, shared out across GPUs under torchrun.

    flashdecode decode gen/*.safetensors -o videos/                    # one process, one progress view
    torchrun --nproc-per-node 8 -m flashdecode decode gen/ -o videos/  # 8 ranks, one GPU each

    import flashdecode.batch
    summary = flashdecode.batch.decode_files(["gen/"], "videos/", weights="random")

Every rank expands the same inputs in the same order and takes every world_size-th file, so each output is
written exactly once and no rank needs to hear from another until the end. Each rank loads its decoder once
(per latent space) and decodes its files one after another with `flashdecode.decode_file`; a file that fails
is recorded and the rest go on. At the end the ranks gather their per-file summaries (torch.distributed,
gloo: a few hundred bytes each, no GPU collective needed) and rank 0 prints the total and writes the JSON.
"""
from __future__ import annotations

import functools
import glob
import os
import stat
import sys
import time
from pathlib import Path

from .errors import FlashdecodeError, printable, shown
from .latents_io import EXTENSIONS as LATENT_SUFFIXES



# -- which files, which outputs ---------------------------------------------------------------------------

def is_many(inputs: list[str]) -> bool:
    """Several inputs, a folder, or a glob pattern the shell left alone: a batch into an output folder."""
    if len(inputs) != 1:
        return True
    path = inputs[0]
    return path != "-" and (Path(path).is_dir() or (glob.has_magic(path) and not Path(path).exists()))


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; a folder's .safetensors/.npy files; a glob's matches (each sorted). Duplicates once."""
    found: list[Path] = []
    for item in inputs:
        if item == "-":
            raise FlashdecodeError("'-' (stdin) decodes one stream; it cannot be one of several inputs")
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in LATENT_SUFFIXES and p.is_file())
            if not files:
                raise FlashdecodeError(f"folder {shown(path)} holds no latent files ({', '.join(LATENT_SUFFIXES)})")
        elif glob.has_magic(item) and not path.exists():
            files = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            if not files:
                raise FlashdecodeError(f"no file matches {item!r}")
        elif path.is_file():
            files = [path]
        elif path.exists():  # a named pipe or a device: read once, it could not be opened twice (plan, then decode)
            what = "a named pipe (FIFO)" if stat.S_ISFIFO(path.stat().st_mode) else "not a regular file"
            raise FlashdecodeError(f"input {shown(path)} is {what}: several inputs must be files; decode a pipe on its "
                                   f"own (flashdecode decode {shown(path)} -o OUT.mp4)")
        else:
            raise FlashdecodeError(f"input {path} does not exist")
        found += files
    return list(dict.fromkeys(found))


def plan_outputs(files: list[Path], outdir: Path, suffix: str = ".mp4", batches: list[int] | None = None) -> list[Path]:
    """outdir/<input's name><suffix> for each input; two inputs that would write one file are refused.

    `batches`: each file's batch size, whose items go to <name>_b0<suffix>, ... (decode_file's names): an item
    of one file and another file (x.npy's item 0 and x_b0.npy) are refused too.
    """
    from .pipeline import output_names

    outputs = [outdir / (f.stem + suffix) for f in files]
    first: dict[Path, Path] = {}
    for f, out, n in zip(files, outputs, batches or [1] * len(files)):
        for name in map(Path, output_names(str(out), list(range(n)))):
            if name in first:
                raise FlashdecodeError(f"{shown(first[name])} and {shown(f)} would both be written to {shown(name)}; "
                                       "rename one of them")
            first[name] = f
    return outputs


def batch_sizes(files: list[Path], key, layout, batch_index) -> list[int]:
    """How many videos each file makes (its batch, or 1 with --batch-index), read from headers; 1 for a file
    that cannot be read (it fails on its own turn, with its own message)."""
    if batch_index is not None:
        return [1] * len(files)
    sizes = []
    for f in files:
        try:
            shape = _header_shape(f, key)
            if shape is None:  # another format: open it (latents_io reads what it must)
                from .latents_io import open_latents

                shape = open_latents(f, key=key, layout=layout, check=False).shape
            sizes.append(int(shape[0]) if len(shape) == 5 else 1)  # [B,C,T,h,w]; a clip or a frame is one video
        except Exception:
            sizes.append(1)
    return sizes


def _header_shape(path: Path, key) -> tuple | None:
    """The latent tensor's shape from a .npy or .safetensors header alone (no tensor read); None for others."""
    import numpy as np

    if path.suffix.lower() == ".npy":
        return np.load(path, mmap_mode="r", allow_pickle=False).shape
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        from .latents_io import _pick_name

        with safe_open(str(path), "pt") as f:
            return tuple(f.get_slice(_pick_name(list(f.keys()), key, str(path))).get_shape())
    return None


def check_outdir(output: str | None, create: bool = True) -> Path:
    """-o for many inputs is a folder (created if missing, unless `create` is False); default: the current folder."""
    if output is None:
        return Path(".")
    if output == "-" or (Path(output).suffix and not output.endswith(("/", os.sep)) and not Path(output).is_dir()):
        raise FlashdecodeError(f"several inputs are decoded into a folder, one video each; pass -o FOLDER/, "
                               f"not {output!r}")
    outdir = Path(output)
    if not create:
        return outdir
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FlashdecodeError(f"cannot create output folder {outdir}: {e.strerror or e}") from None
    if not os.access(outdir, os.W_OK):
        raise FlashdecodeError(f"output folder {outdir} is not writable")
    return outdir


# -- ranks ------------------------------------------------------------------------------------------------

def torchrun_rank() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment, without joining a process group; (0, 1) outside it."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


_joined: list = []  # non-empty once distributed() started the process group (so gather() ends it)


def distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; joins the process group when world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")  # only small Python objects travel: no NCCL, works on CPU too
        _joined.append(True)
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def rank_device(device: str | None, world: int, local_rank: int) -> str | None:
    """One GPU per rank: cuda:LOCAL_RANK when several ranks share a node (unless a device index was given)."""
    import torch

    if world == 1 or device == "cpu" or (device or "").startswith("cuda:"):
        return device
    if device == "cuda" or (device is None and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return device


def gather(results: list[dict], world: int) -> list[dict]:
    if world == 1:
        return results
    import torch.distributed as dist

    everyone: list = [None] * world
    dist.all_gather_object(everyone, results)
    # Leave together: a rank exiting while gloo still holds its peer's socket can abort the other at exit.
    if _joined:
        dist.barrier()
        dist.destroy_process_group()
        _joined.clear()
    return sorted((r for rank in everyone for r in rank), key=lambda r: r["index"])


# -- the run ----------------------------------------------------------------------------------------------

def _latent_space_of(path: Path, latent_space: str, weights_meta: dict, key, layout) -> str:
    """The latent space of one file, as decode_file will resolve it (to pick or load its decoder)."""
    from .latents_io import open_latents
    from .pipeline import resolve_latent_space

    latents = open_latents(path, key=key, layout=layout, check=False)
    return resolve_latent_space(latent_space, latents, weights_meta)


def decode_files(inputs: list[str], output: str | None = None, *, model=None, weights=None, latent_space="auto",
                 layout=None, key=None, device=None, dtype=None, compile=None, quiet=True, json_path=None,
                 suffix: str = ".mp4", **decode_kw) -> dict:
    """Decode every input (files, folders, globs) to OUTPUT/<name><suffix>; under torchrun, shared across ranks.

    Other keywords (raw, batch_index, fps, crf, codec, preset, overwrite) go to `decode_file` for every file.
    Returns the summary (also written to `json_path` by rank 0): status, inputs, ok, failed, outputs, frames,
    seconds, world_size, and `files`, one `decode_file` summary per input with its rank. Raises
    FlashdecodeError on rank 0 if any file failed (after the others are written and the summary saved).
    """
    from .engine import load_decoder
    from .engine import resolve_device
    from .outputs import check_distinct, check_names
    from .pipeline import RANDOM_WEIGHTS_NOTE, check_json_path, decode_file, output_names, weights_metadata
    from .video_io import CONTAINERS, written_paths
    from .progress import DecodeProgress
    from .signals import stop_status

    if decode_kw.get("stdout_format"):
        raise FlashdecodeError("--format applies to stdout (-o -); several inputs are decoded into a folder")
    from .arguments import PATH, check_types

    check_types(output=(output, PATH, "a folder path"), json_path=(json_path, PATH, "a path"),
                suffix=(suffix, str, "a video extension like '.mp4'"))
    if isinstance(inputs, (str, os.PathLike)):  # one file, folder or glob
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise FlashdecodeError(f"decode_files needs a non-empty list of files, folders or globs, not {inputs!r}")
    check_names([("input", i) for i in inputs] + [("output", output), ("--json", json_path)])
    if Path(f"x{suffix}").suffix.lower() not in CONTAINERS and suffix.lower() != ".y4m":
        raise FlashdecodeError(f"suffix {suffix!r} is not a video extension; use .mp4, .mkv, .mov, .webm or .y4m")
    files = expand_inputs([str(i) for i in inputs])
    json_path = Path(json_path) if json_path is not None else None
    if json_path is not None:
        check_json_path(json_path)
    outdir = check_outdir(output, create=False)
    sizes = batch_sizes(files, key, layout, decode_kw.get("batch_index"))
    outputs = plan_outputs(files, outdir, suffix, sizes)
    names = [output_names(str(out), list(range(n))) for out, n in zip(outputs, sizes)]  # each file's videos
    check_distinct(reads=[*(("input", f) for f in files), ("--weights", weights if weights != "random" else None)],
                   writes=[*(("output", p) for file_names in names for o in file_names for p in written_paths(o)),
                           ("--json", json_path)])
    check_outdir(output)  # created once nothing is left to refuse
    rank, world, local_rank = distributed()
    dev = resolve_device(rank_device(device, world, local_rank))
    mine = list(range(rank, len(files), world))  # every world-th file: each output written by exactly one rank

    decoders: dict = {}  # one per latent space met on this rank, loaded on first use
    # The checkpoint's header, read once; not cached if it fails, so each file still fails on its own turn
    weights_meta = functools.cache(lambda: weights_metadata(model, weights))
    display = DecodeProgress(dev, quiet=quiet or rank != 0)  # one view: rank 0's files, total over ranks at the end
    results, start, status = [], time.perf_counter(), "ok"
    started = time.time()  # what other ranks wrote since then is this run's (a stopped run's summary reads the disk)
    try:
        for n, i in enumerate(mine):
            where = f" on rank 0 of {world}" if world > 1 else ""
            display.label = f"decode [{n + 1}/{len(mine)}{where}] {shown(files[i].name)}"
            seen = [0, 0]

            def progress(latent_frames, pixel_frames):
                display.update(latent_frames - seen[0], pixel_frames - seen[1])
                seen[:] = latent_frames, pixel_frames

            try:
                space = _latent_space_of(files[i], latent_space, weights_meta(), key, layout)
                if space not in decoders:
                    variant = model or ("s" if weights == "random" else None)
                    load_kw = {"compile": compile} if compile is not None else {}
                    decoders[space] = load_decoder(variant, space, weights=weights, device=dev, dtype=dtype, **load_kw)
                    if decoders[space].random_weights and rank == 0:
                        print(RANDOM_WEIGHTS_NOTE, file=sys.stderr, flush=True)
                summary = decode_file(files[i], outputs[i], latent_space=space, layout=layout, key=key,
                                      weights=weights, decoder=decoders[space], quiet=True, progress=progress,
                                      **decode_kw)
            except KeyboardInterrupt as e:  # the file in progress is flushed: it goes in the summary with its frames
                results.append({"outputs": [], "frames": 0, **getattr(e, "summary", {}), "status": stop_status(e)[0],
                                "input": str(files[i]),
                                "index": i, "rank": rank})
                raise
            except Exception as e:  # recorded; the other files go on (and no rank is left waiting at the gather)
                message = str(e) if isinstance(e, FlashdecodeError) else f"{shown(files[i])}: {type(e).__name__}: {e}"
                summary = {"outputs": [], "frames": 0, **getattr(e, "summary", {}), "status": "error",
                           "input": str(files[i]), "error": message}
                print(f"failed: {printable(message)}", file=sys.stderr, flush=True)
            results.append({**summary, "index": i, "rank": rank})
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP: decode_file has flushed the file it was on
        status = stop_status(e)[0]
        raise
    finally:
        done = f" ({len(results)} file{'s' * (len(results) != 1)})"
        stats = display.finish(f"rank {rank}: decoded" if world > 1 else "decoded", done)
        if status != "ok" and rank == 0:  # no gather: the other ranks are being stopped too; read what they wrote
            others = on_disk(files, names, rank, world, {r["index"] for r in results}, started)
            _write_summary(json_path, _summary(results + others, files, world, time.perf_counter() - start, status))
    try:
        everything = gather(results, world)
    except Exception as e:  # a rank died (kill -9, out of memory): the others report what is on disk
        everything = results + on_disk(files, names, rank, world, {r["index"] for r in results}, started)
        summary = _summary(everything, files, world, time.perf_counter() - start, "error")
        if rank == 0:
            _write_summary(json_path, summary)
        raise FlashdecodeError(f"rank {rank}: another rank stopped before the end ({type(e).__name__}); "
                               f"{summary['frames']} frames are in {outdir}" + (f", see {json_path}" if json_path
                                                                                 and rank == 0 else "")) from None
    summary = _summary(everything, files, world, time.perf_counter() - start, status)
    summary["peak_mem_bytes_rank0"] = stats.get("peak_mem_bytes")
    if rank == 0:
        _write_summary(json_path, summary)
        if not quiet:
            print(f"{summary['ok']} of {len(files)} files decoded ({summary['frames']} frames) into {shown(outdir)} in "
                  f"{summary['seconds']:.2f} s" + (f" by {world} ranks" if world > 1 else ""), file=sys.stderr,
                  flush=True)
        if summary["failed"]:
            first = next(r for r in everything if r["status"] != "ok")
            raise FlashdecodeError(f"{summary['failed']} of {len(files)} inputs failed (the first: {first['error']})"
                                   + (f"; see {json_path}" if json_path else ""))
    return summary


def _summary(results: list[dict], files: list[Path], world: int, seconds: float, status: str) -> dict:
    failed = sum(r["status"] != "ok" for r in results)
    if status == "ok" and failed:
        status = "error"
    return {"status": status, "inputs": len(files), "ok": sum(r["status"] == "ok" for r in results),
            "failed": failed, "outputs": [o for r in results for o in r.get("outputs", []) if r.get("frames")],
            "frames": sum(r.get("frames", 0) for r in results), "seconds": round(seconds, 3), "world_size": world,
            "files": results}


def _write_summary(json_path: Path | None, summary: dict) -> None:
    from .pipeline import write_summary

    write_summary(json_path, sorted_summary(summary))


def sorted_summary(summary: dict) -> dict:
    return {**summary, "files": sorted(summary["files"], key=lambda r: r["index"])}


WAIT_FOR_RANKS = 10.0  # seconds a stopped rank 0 waits for the others to flush the files they hold


def on_disk(files: list[Path], names: list[list[str]], rank: int, world: int, known: set[int],
            started: float) -> list[dict]:
    """Per-file entries for the files this rank has no summary of (other ranks'), read from the disk: each
    output this run wrote (its lock released: flushed; modified since `started`) with the frames a reader finds."""
    from .outputs import is_locked
    from .video_io import count_video_frames, output_kind, png_frames, png_target

    deadline = time.monotonic() + WAIT_FOR_RANKS
    found = []
    for i, (f, file_names) in enumerate(zip(files, names)):
        if i in known:
            continue
        n = len(file_names)
        while any(is_locked(Path(o)) for o in file_names) and time.monotonic() < deadline:
            time.sleep(0.1)  # its rank is flushing it
        held, frames = [], []
        for o in file_names:
            try:
                if output_kind(o) == "png":
                    folder, pattern = png_target(o)
                    got = png_frames(folder, pattern)
                    k = len(got) if got and max(p.stat().st_mtime for p in got) >= started else 0
                else:
                    k = count_video_frames(o) if os.path.getmtime(o) >= started else 0
            except OSError:
                k = 0
            if k:
                held.append(o)
                frames.append(k)
        mine = i % world == rank  # this rank never reached it; another rank's file is known only by its output
        found.append({"status": "not started" if mine else "unreported", "input": str(f), "outputs": held,
                      "frames": min(frames) if len(frames) == n else 0, "index": i, "rank": i % world,
                      "read_from_disk": True})
    return found


__all__ = ["decode_files", "expand_inputs", "is_many", "plan_outputs"]
