"""Decode a latent file to a video in one call: read -> decode -> convert -> write, with progress and a summary.

    import flashdecode
    summary = flashdecode.decode_file("clip.safetensors", "clip.mp4", model="s", weights="random")

Data flows one way: latents_io reads latent frames (a file, or NPY arrays as they arrive on stdin) ->
Decoder.stream turns each into pixel chunks -> uint8 on the device (YUV 4:2:0 for video encoders, rgb24
otherwise) -> each VideoWriter's queue -> its encoder thread. Nothing holds the whole video: the pixels of a
chunk are dropped once the writer has them. Whatever stops the run (the end, an error, Ctrl-C, SIGTERM), the
outputs are flushed and the summary tells how many frames each one holds. `flashdecode decode` is this
function plus option parsing.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import sys
from pathlib import Path

from .errors import FlashdecodeError, shown
from .latent_spaces import LATENT_SPACES
from .video_io import FPS_RANGE

DEFAULT_FPS = 16.0
RANDOM_WEIGHTS_NOTE = ("note: the weights are random (--weights random): the video is noise; use it to measure speed "
                       "and memory")


# -- checking the options ---------------------------------------------------------------------------------

def resolve_latent_space(requested: str, latents, weights_meta: dict) -> str:
    """latent_space, or for auto: the latents' metadata, the checkpoint's, then the channel count."""
    if requested != "auto":
        if requested not in LATENT_SPACES:
            raise FlashdecodeError(f"unknown latent space {requested!r}; choose auto or {', '.join(LATENT_SPACES)}")
        space, why = requested, "--latent-space"
    else:
        from_file = latents.metadata.get("latent_space")
        from_weights = weights_meta.get("latent_space")
        if from_file in LATENT_SPACES and from_weights and from_file != from_weights:
            raise FlashdecodeError(f"{shown(latents.name)} holds {from_file} latents (its metadata) but the weights were trained "
                                   f"for {from_weights}; pass weights for {from_file}")
        space, why = latents.latent_space_guess()
        if from_file not in LATENT_SPACES and from_weights in LATENT_SPACES:
            space, why = from_weights, "the checkpoint"
    channels = LATENT_SPACES[space].channels if space else None
    if channels != latents.channels:
        ntchw_channels = latents.shape[2]  # what the channel count would be if the file were NTCHW
        plausible = ntchw_channels == channels if space else ntchw_channels in (16, 48)
        hint = " (or the file is NTCHW: pass --layout ntchw)" if latents.layout == "ncthw" and plausible else ""
        expected = f"latent space {space!r} ({why}) has {channels}" if space else \
            "wan2.1 has 16, wan2.2 and demo have 48"
        raise FlashdecodeError(f"{shown(latents.name)} has {latents.channels} channels (shape {list(latents.shape)} as "
                               f"[B,C,T,h,w], layout {latents.layout}) but {expected}; pass the matching "
                               f"--latent-space/--weights{hint}")
    return space


def resolve_fps(fps, metadata: dict, name: str) -> float:
    """--fps, else the file's 'fps' metadata, else 16; a bad value names where it came from."""
    lo, hi = FPS_RANGE
    if fps is not None:
        value, source = fps, f"--fps {fps}"
    elif metadata.get("fps") is not None:
        value, source = metadata["fps"], f"the 'fps' metadata of {shown(name)} ({metadata['fps']!r})"
    else:
        return DEFAULT_FPS
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and lo <= value <= hi):
        fix = "pass a number" if fps is not None else "pass --fps to override it"
        raise FlashdecodeError(f"{source} is not a usable frame rate; {fix} between {lo:g} and {hi:g}")
    return value


def weights_metadata(model, weights) -> dict:
    """What the weights say before any loading: another family's --model names its latent space (the stock Wan
    VAE, a TAEHV file); a FlashDecoder checkpoint's header says its own."""
    from .checkpoint import read_metadata
    from .engine import FAMILIES

    if model in FAMILIES:
        return {"latent_space": FAMILIES[model][1]}
    return read_metadata(weights) if weights not in (None, "random") else {}


def check_json_path(json_path: Path) -> None:
    if json_path.is_dir():
        raise FlashdecodeError(f"--json {shown(json_path)} is a folder; give a file name like {shown(json_path / 'summary.json')}")
    if not json_path.parent.is_dir():
        raise FlashdecodeError(f"--json {shown(json_path)}: folder {shown(json_path.parent)} does not exist")
    if not os.access(json_path.parent, os.W_OK) or (json_path.exists() and not os.access(json_path, os.W_OK)):
        raise FlashdecodeError(f"--json {shown(json_path)} is not writable; pick another path")


def write_summary(json_path: Path | None, summary: dict) -> None:
    """The --json summary, or one FlashdecodeError line (a full disk, a vanished folder): never half a file."""
    if json_path is None:
        return
    try:
        with open(json_path, "w") as f:
            f.write(json.dumps(summary, indent=2) + "\n")
    except OSError as e:
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.stat(json_path).st_mode):  # a cut-off summary would be a half-truth: it goes
                os.unlink(json_path)
        raise FlashdecodeError(f"cannot write --json {json_path}: {e.strerror or e}; the outputs are written, "
                               "only the summary is missing") from None


def check_arguments(**given) -> None:
    """decode_file's arguments: one TypeError naming the first of the wrong type (the CLI passes them right)."""
    from .arguments import PATH, check_types, is_decoder

    text = "a string or None"
    if given["input"] is None:
        raise TypeError("input must be a path to latents or '-' (stdin), not None")
    check_types(input=(given["input"], PATH, "a path or '-'"), output=(given["output"], PATH, "a path or '-'"),
                model=(given["model"], str, text), weights=(given["weights"], PATH, "a path or 'random'"),
                latent_space=(given["latent_space"], str, text), layout=(given["layout"], str, text),
                key=(given["key"], str, text), raw=(given["raw"], bool, "True or False"),
                compile=(given["compile"], bool, "True or False"),
                batch_index=(given["batch_index"], int, "an integer like 0"),
                fps=(given["fps"], (int, float), "a number like 16"), crf=(given["crf"], int, "an integer like 18"),
                codec=(given["codec"], str, text), preset=(given["preset"], str, text),
                stdout_format=(given["stdout_format"], str, text), quiet=(given["quiet"], bool, "True or False"),
                json_path=(given["json_path"], PATH, "a path"), overwrite=(given["overwrite"], bool, "True or False"))
    if given["dtype"] is not None and not isinstance(given["dtype"], str):
        import torch

        if not isinstance(given["dtype"], torch.dtype):
            raise TypeError(f"dtype must be a name like 'bf16' or a torch.dtype, not {type(given['dtype']).__name__}")
    if given["progress"] is not None and not callable(given["progress"]):
        raise TypeError(f"progress must be a function progress(latent_frames, pixel_frames), not "
                        f"{type(given['progress']).__name__}")
    if given["decoder"] is not None and not is_decoder(given["decoder"]):
        raise TypeError(f"decoder must be a loaded Decoder (flashdecode.load_decoder(...)), not "
                        f"{type(given['decoder']).__name__} {given['decoder']!r:.40}; to pick a model by name pass "
                        "model=")


def output_names(output: str, items: list[int]) -> list[str]:
    from .video_io import batch_output_name

    return [output] if len(items) == 1 else [batch_output_name(output, i) for i in items]


# -- the run ----------------------------------------------------------------------------------------------

def decode_file(input, output=None, *, model=None, weights=None, latent_space="auto", layout=None, key=None,
                raw=None, device=None, dtype=None, compile=None, batch_index=None, fps=None, crf=None,
                codec=None, preset=None, stdout_format=None, quiet=True, progress=None, json_path=None,
                overwrite=False, decoder=None, scale=None) -> dict:
    """Decode the latents in `input` (.safetensors, .npy, ComfyUI .latent, torch.save .pt/.pth, or '-' for NPY
    arrays on stdin) to `output`. `raw`: True for raw VAE latents, False for normalized ones, None (default):
    what the file says (a ComfyUI .latent holds raw ones), else normalized.

    output: .mp4/.mkv/.mov/.webm, .gif/.webp/.apng (animated previews), .y4m, a folder or %05d.png pattern,
    or '-' (stdout; `stdout_format` y4m, raw or mp4). `scale` (e.g. 0.5) resizes the frames on the device,
    before the uint8 conversion, to even sizes. Default: input's name with .mp4. A batch goes to OUTPUT_b0,
    OUTPUT_b1, ... unless `batch_index` picks one item. `quiet=False` shows live progress on stderr; `progress(latent_frames,
    pixel_frames)` is called with the totals after each latent frame. `overwrite=True` clears the frames of
    an earlier run from a PNG folder (without it such a folder is refused). Returns the summary dict that
    `--json` writes (status, frames, outputs, fps, ...), also written to `json_path` if given.

    Raises FlashdecodeError for bad input or a full disk, KeyboardInterrupt (or signals.Interrupted) when
    stopped; in every case the outputs are flushed first, and `json_path` gets the summary with the
    status ("error", "interrupted", "terminated", "hangup") and the frames actually on disk. The summary is
    also attached to the exception as `.summary`.

    `decoder`: an already loaded `Decoder` to reuse across files (flashdecode.batch loads one per GPU); `model`,
    `weights`, `dtype` and `compile` are then its own.
    """
    from .engine import FAMILIES, load_decoder, resolve_device
    from .latents_io import open_latents
    from .memory import check_memory
    from .progress import DecodeProgress
    from .signals import stop_status
    from .convert import HostCopies, convert, frame_shape
    from .scale import check_scale, resize, scaled_size
    from .outputs import check_distinct, check_names
    from .video_io import VideoWriter, is_disk_error, is_png_frame_of, output_kind, written_paths

    check_arguments(input=input, output=output, model=model, weights=weights, latent_space=latent_space,
                    layout=layout, key=key, raw=raw, dtype=dtype, compile=compile, batch_index=batch_index, fps=fps,
                    crf=crf, codec=codec, preset=preset, stdout_format=stdout_format, quiet=quiet,
                    progress=progress, json_path=json_path, overwrite=overwrite, decoder=decoder)
    input = str(input)
    output = str(output) if output is not None else ("-" if input == "-" else Path(input).with_suffix(".mp4").name)
    check_names([("input", input), ("output", output), ("--json", json_path),
                 ("--weights", weights if weights != "random" else None)])
    output_kind(output)  # an unknown extension or a bad pattern fails before anything is read
    scale = check_scale(scale)
    if stdout_format is not None and output != "-":
        raise FlashdecodeError(f"--format applies to stdout (-o -) only; the output {output!r} is chosen by its name")
    json_path = Path(json_path) if json_path is not None else None
    if json_path is not None:
        check_json_path(json_path)
    dev = resolve_device(device)
    model_name = decoder.name if decoder is not None else model
    weights_meta = weights_metadata(model_name, weights)
    space_hint = latent_space if latent_space in LATENT_SPACES else weights_meta.get("latent_space")
    channels = {LATENT_SPACES[space_hint].channels} if space_hint in LATENT_SPACES else None

    latents = open_latents(input, key=key, layout=layout, channels=channels)
    space = resolve_latent_space(latent_space, latents, weights_meta)
    raw = bool(latents.raw if raw is None else raw)
    B, C, T, h, w = latents.shape
    if T == 0:
        raise FlashdecodeError(f"{shown(latents.name)} holds no latent frames (shape {list(latents.shape)} as [B,C,T,h,w]); "
                               "nothing to decode")
    patch = 1 if model_name in FAMILIES else LATENT_SPACES[space].patch  # FlashDecoder's tokens; conv decoders take any grid
    if h % patch or w % patch:
        raise FlashdecodeError(f"latent grid {h}x{w} must be a multiple of {patch} for {space}; check the producer")
    if batch_index is not None and not 0 <= batch_index < B:
        raise FlashdecodeError(f"--batch-index {batch_index} is out of range: {shown(latents.name)} holds a batch of {B}")
    items = [batch_index] if batch_index is not None else list(range(B))
    if len(items) > 1 and output == "-":
        raise FlashdecodeError(f"{shown(latents.name)} holds a batch of {B}; stdout takes one video: pass --batch-index N")
    outputs = output_names(output, items)
    check_distinct(reads=[("input", input), ("--weights", weights if weights != "random" else None)],
                   writes=[*(("output", p) for o in outputs for p in written_paths(o)), ("--json", json_path)])
    if json_path is not None and any(is_png_frame_of(json_path, o) for o in outputs):
        raise FlashdecodeError(f"--json {json_path} is named like a frame of the PNG output {output}: a frame "
                               "would replace it; pick another --json path")
    fps = resolve_fps(fps, latents.metadata, latents.name)

    with contextlib.ExitStack() as stack:
        writers = []
        for name in outputs:  # created now: an unwritable output fails before the model loads
            writers.append(VideoWriter(name, fps=fps, crf=crf, codec=codec, preset=preset,
                                       stdout_format=stdout_format or "y4m", overwrite=overwrite))
            stack.callback(writers[-1].close)  # a failure before decoding removes what was created

        if decoder is None:
            variant = model or ("s" if weights == "random" else None)  # else: the checkpoint's, or any bundled one
            load_kw = {"compile": compile} if compile is not None else {}
            decoder = load_decoder(variant, space, weights=weights, device=dev, dtype=dtype, **load_kw)
            if decoder.random_weights:  # said even when quiet: the video will be noise
                print(RANDOM_WEIGHTS_NOTE, file=sys.stderr, flush=True)
        elif decoder.latent_space.name != space:
            raise FlashdecodeError(f"{shown(latents.name)} holds {space} latents but the decoder is for "
                                   f"{decoder.latent_space.name}; decode files of one latent space together")
        check_memory(decoder, len(items), h, w)
        H, W = scaled_size(*decoder.pixel_size(h, w), scale)  # what the writers get
        # One probe for all: every output of a batch is named from one --output, so one suffix, codec, crf, preset
        writers[0].check_frame_size(H, W)
        stack.pop_all()

    chunks = latents.chunks
    if batch_index is not None:
        chunks = (z[batch_index:batch_index + 1] for z in chunks)
    fmt = writers[0].input_format  # yuv420p for video encoders, rgb24 for PNG, y4m, raw (one kind per run)
    copies = HostCopies(decoder.device)
    display = DecodeProgress(decoder.device, total_latent_frames=T, quiet=quiet)
    status, failure = "stopped", None
    try:
        for pixels in decoder.stream(chunks, raw=raw, native=True):  # the model's own output, converted once
            if scale is not None:
                pixels = resize(pixels, (H, W))
            nb, _, k, H, W = pixels.shape
            host, ready, done = copies.to_host(convert(pixels, fmt), readers=len(writers))  # uint8 [B,k,...]
            for writer, item in zip(writers, host):
                writer.write(item.reshape(k, *frame_shape(fmt, H, W)), fmt, ready, done)
            display.update(1, nb * k)
            if progress is not None:
                progress(display.latent_frames, display.pixel_frames)
        status = "ok"
    except KeyboardInterrupt as e:
        status = stop_status(e)[0]
        failure = e
    except BaseException as e:
        status = "error"
        failure = e
    # Flush every output now, whatever happened: each one is a playable file of the frames so far.
    close_error = None
    for writer in writers:
        try:
            writer.close()
        except Exception as e:
            close_error = close_error or e
    if status == "ok" and close_error is not None:
        status, failure = "error", close_error
    if status == "ok" and display.latent_frames == 0:
        status, failure = "error", FlashdecodeError(f"{shown(latents.name)} held no latent frames; nothing was written")
    written = min(wr.frames_written for wr in writers)  # after a full disk: what a reader finds in the file
    where = ", ".join(shown(o) for o in outputs)  # a name with a newline must not forge a line
    if failure is not None and is_disk_error(failure):
        kept = f"kept the {written} frames written before that" if written else "removed it (no complete frame)"
        failure = FlashdecodeError(f"cannot write {where}: {failure.strerror or failure} (disk full or file-size "
                                   f"limit); {kept}")
    if failure is not None and type(failure).__module__.split(".")[0] == "av":  # an encoder's refusal: one line
        failure = FlashdecodeError(f"cannot encode {where}: {failure}; {written} frames were written")
    stats = display.finish("decoded" if status == "ok" else f"{status} after",
                           f" -> {where}" if status == "ok" else f"; {where} holds {written} frames")
    summary = {"status": status, "input": latents.name, "outputs": outputs, "frames": written,
               "width": W, "height": H, "fps": fps, "batch": len(items), "model": decoder.name,
               "latent_space": space, "raw": raw, "dtype": decoder.precision,
               "random_weights": decoder.random_weights, "parameters": decoder.num_parameters(), **stats}
    if failure is not None:
        summary["error"] = str(failure) or type(failure).__name__
    try:
        write_summary(json_path, summary)
    except FlashdecodeError as e:  # the video is done and stays; the summary's failure is the one line
        if failure is None:
            e.summary = summary
            raise
    if failure is not None:
        with contextlib.suppress(AttributeError, TypeError):
            failure.summary = summary
        raise failure
    return summary
