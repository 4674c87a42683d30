"""What `flashdecode bench` measures: one `Case` per decoder x resolution x length x dtype x compile mode.

Cases are plain data (they cross to the case process as JSON); parsing the CLI's lists and building every
combination live here, as does the row of a case that could not run.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import FlashdecodeError
from ..latent_spaces import pixel_frames

RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280), "1080p": (1088, 1920)}
# --baseline NAME -> the cases beside FlashDecoder. wan2.x: diffusers' own `vae.decode` (kind "baseline", the whole
# clip at once, as its pipelines call it) and the same conv decoder streamed frame by frame through the shared
# decoder interface (kind "family": load_decoder("wan2.x-vae")). taehv: the tiny decoder of the FlashDecoder rows'
# latent space (load_decoder("taew2.x")). So one table shows the three classes a user picks from: the stock conv
# decoder (the quality reference), the tiny decoder (speed) and FlashDecoder (both).
BASELINES = ("wan2.1", "wan2.2", "taehv")
FAMILY_BASELINES = {"wan2.1": "wan2.1-vae", "wan2.2": "wan2.2-vae"}  # streamed beside diffusers' call
TINY_DECODERS = {"wan2.1": "taew2.1", "wan2.2": "taew2.2"}  # --baseline taehv, by latent space
KINDS = ("baseline", "family", "flashdecode")
ROW_MARK = "FLASHDECODE_BENCH_ROW "  # prefixes the one line of a case process's stdout that holds its row
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "262144", "PYTHONUNBUFFERED": "1"}
DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
               "fp16": "float16", "float16": "float16", "fp8": "fp8"}
COMPILE_MODES = {"auto": None, "on": True, "off": False}  # -> load_decoder(compile=...); None: its measured default
OUTPUTS = ("mp4", "raw")  # end-to-end rows: decode_file into an .mp4 file, or raw rgb24 to /dev/null
E2E_MAX_FILE_BYTES = 2e9  # the end-to-end run reads a latent file written first: bound its size on disk


@dataclass
class Case:
    """One measurement: what to decode, where, and how many times."""

    kind: str  # a KINDS value: "baseline" (diffusers' vae.decode), "family" (load_decoder's other families), "flashdecode"
    model: str  # flashdecode variant ("s"), diffusers baseline ("wan2.2") or family model ("wan2.2-vae", "taew2.2")
    res: str  # label: "720p" or "256x256"
    height: int
    width: int
    latent_frames: int
    latent_space: str = "wan2.2"  # the space its latents are in (a baseline's and a family's are their own)
    device: str = "cpu"
    dtype: str = "float32"  # a DTYPE_NAMES value: float32, bfloat16, float16 or fp8
    compile: str = "off"  # a COMPILE_MODES key (flashdecode only)
    output: str | None = None  # an OUTPUTS value: also measure end to end (flashdecode only)
    warmup: int = 1
    repeat: int = 3
    budget_s: float = 120.0  # stop repeating once another run would pass this (at least one run)
    weights: str = "random"  # FlashDecoder rows; baselines and families always run with random weights
    baseline_size: str = "full"  # "tiny": narrow conv decoders, for tests of the harness
    threads: int | None = None  # CPU threads (torch.set_num_threads); None: torch's default

    @property
    def decoder(self) -> str:
        return {"flashdecode": f"flashdecode-{self.model}", "baseline": f"{self.model}-conv"}.get(self.kind, self.model)


# -- parsing ------------------------------------------------------------------------------------------


def parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_int_list(text: str, option: str) -> list[int]:
    """'10,100,1000' -> [10, 100, 1000], or one line that names the option and the bad item."""
    values = []
    for item in parse_list(text):
        try:
            values.append(int(item))
        except ValueError:
            raise FlashdecodeError(f"{option} takes whole numbers separated by commas (e.g. 10,100,1000); "
                                   f"{item!r} is not one") from None
    if not values:
        raise FlashdecodeError(f"{option} is empty; give whole numbers separated by commas (e.g. 10,100,1000)")
    return values


def parse_choices(text: str, option: str, choices) -> list[str]:
    """A comma list of names from `choices` (case-insensitive), in order, without repeats."""
    values = list(dict.fromkeys(v.lower() for v in parse_list(text)))
    for v in values:
        if v not in choices:
            raise FlashdecodeError(f"{option}: {v!r} is not one of {', '.join(choices)}")
    if not values:
        raise FlashdecodeError(f"{option} is empty; choose from {', '.join(choices)}")
    return values


def parse_dtypes(text: str | None, device: str) -> list[str]:
    """--dtype (a comma list) -> canonical names; default bfloat16 on cuda, float32 on cpu."""
    if text is None:
        return ["bfloat16" if device == "cuda" else "float32"]
    return list(dict.fromkeys(DTYPE_NAMES[d] for d in parse_choices(text, "--dtype", DTYPE_NAMES)))


def parse_resolution(text: str) -> tuple[str, int, int]:
    """'720p' or 'HxW' (pixels, multiples of 16) -> (label, height, width)."""
    text = text.strip().lower()
    if text in RESOLUTIONS:
        return (text, *RESOLUTIONS[text])
    try:
        height, width = (int(v) for v in text.split("x"))
    except ValueError:
        raise FlashdecodeError(f"resolution {text!r} is not {', '.join(RESOLUTIONS)} or HxW (e.g. 256x256)") from None
    if height <= 0 or width <= 0 or height % 16 or width % 16:
        raise FlashdecodeError(f"resolution {height}x{width} must be positive multiples of 16 (one token is 16x16 "
                               "pixels); e.g. 1088x1920 for 1080p")
    return f"{height}x{width}", height, width


def build_cases(resolutions: list[str], models: list[str], baselines: list[str], lengths: list[int],
                dtypes: list[str] = ("float32",), compiles: list[str] = ("off",), **common) -> list[Case]:
    """Every (resolution, length, decoder, dtype, compile mode), baselines first so a failing baseline shows
    early: diffusers' call, the same decoder streamed, the tiny decoder, then FlashDecoder. Baselines run once per
    dtype they support (not fp8, not compiled; fp8 alone: the device's default)."""
    from ..model import VARIANTS

    for m in models:
        if m not in VARIANTS:
            raise FlashdecodeError(f"unknown model {m!r}; choose from {', '.join(VARIANTS)}")
    for b in baselines:
        if b not in BASELINES:
            raise FlashdecodeError(f"unknown baseline {b!r}; choose from {', '.join(BASELINES)} or none")
    if not models and not baselines:
        raise FlashdecodeError("nothing to measure; pass --model and/or --baseline")
    if not resolutions:
        raise FlashdecodeError("no resolution to measure; pass --res, e.g. 720p or 256x256")
    if any(n < 1 for n in lengths):
        raise FlashdecodeError(f"--lengths: latent frame counts must be at least 1, got {min(lengths)}")
    for d in dtypes:
        if d not in DTYPE_NAMES.values():
            raise FlashdecodeError(f"unknown dtype {d!r}; choose from {', '.join(DTYPE_NAMES)}")
    for c in compiles:
        if c not in COMPILE_MODES:
            raise FlashdecodeError(f"unknown compile mode {c!r}; choose from {', '.join(COMPILE_MODES)}")
    if common.get("output") not in (None, *OUTPUTS):
        raise FlashdecodeError(f"unknown output {common['output']!r}; choose from {', '.join(OUTPUTS)}")
    fallback = "bfloat16" if common.get("device") == "cuda" else "float32"
    baseline_dtypes = [d for d in dtypes if d != "fp8"] or [fallback]
    baseline_common = {k: v for k, v in common.items() if k not in ("output", "latent_space", "weights")}
    space = common.get("latent_space", "wan2.2")
    beside = [("baseline", b, b) for b in baselines if b in FAMILY_BASELINES]
    beside += [("family", FAMILY_BASELINES[b], b) for b in baselines if b in FAMILY_BASELINES]
    if "taehv" in baselines:
        if space not in TINY_DECODERS:
            raise FlashdecodeError(f"--baseline taehv: no tiny decoder for latent space {space!r}; "
                                   f"choose --latent-space {' or '.join(TINY_DECODERS)}")
        beside.append(("family", TINY_DECODERS[space], space))
    cases = []
    for res in resolutions:
        label, height, width = parse_resolution(res)
        for n in sorted(set(lengths)):
            cases += [Case(kind, name, label, height, width, n, latent_space=own, dtype=d, **baseline_common)
                      for d in baseline_dtypes for kind, name, own in beside]
            cases += [Case("flashdecode", name, label, height, width, n, dtype=d, compile=c, **common)
                      for name in models for d in dtypes for c in compiles]
    return cases


def failed_row(case: Case, **why) -> dict:
    return dict(decoder=case.decoder, kind=case.kind, model=case.model, res=case.res, height=case.height,
                width=case.width, frames=pixel_frames(case.latent_frames), latent_frames=case.latent_frames,
                latent_space=case.latent_space, device=case.device,
                dtype=case.dtype, compile=case.compile if case.kind == "flashdecode" else "off", compiled=False,
                output=case.output if case.kind == "flashdecode" else None,
                random_weights=case.kind != "flashdecode" or case.weights == "random",
                params=None, fps=None, ms_per_latent_frame=None, peak_mem_bytes=None, **why)


def check_baseline_dependency(baselines: list[str]) -> None:
    """Fail before any case runs, with the install line (find_spec: importing diffusers takes seconds)."""
    import importlib.util

    if set(baselines) & set(FAMILY_BASELINES) and importlib.util.find_spec("diffusers") is None:
        from ..wan_vae import autoencoder_class

        autoencoder_class()


