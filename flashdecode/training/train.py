"""Train a FlashDecoder for a teacher's latent space on real video.

Data flows one way: videos -> random clips -> teacher encoder (once, cached as safetensors shards) ->
(pixels, latents) batches -> the streaming path unrolled over each clip (no masks, as at inference) ->
L1 + (1 - SSIM of luma) loss. AdamW (fused) with warm-up and cosine decay, gradient clipping, EMA weights,
periodic evaluation and checkpoints, --resume. Under `torchrun --nproc-per-node N` the same code trains with DDP.

Never worse than where it starts: the EMA weights are evaluated before the first step, and decoder.safetensors
only ever holds the best EMA evaluation so far (the start included). From `--init teacher` the parts that carry
the teacher's exact inverse (embed, time_up, head) learn at a tenth of the rate of the blocks, so the residual
blocks learn what a linear decoder cannot without the carried signal being shaken loose.

The step keeps the host out of the way: no host-device sync outside log and eval steps (TrainConfig.sync_debug
turns any into an error). Batches move as uint8, pinned, copied non_blocking on a side stream one step ahead
(prefetch.py) and converted on the device; loss and PSNR are summed on the device and read once per log line;
the optimizer is fused; the EMA is one foreach lerp; no constant is built on the host inside the step.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel

from ..checkpoint import save_checkpoint
from ..engine import Decoder, build_model
from ..errors import FlashdecodeError
from ..model import ModelConfig, flops_per_clip
from ..video_io import from_uint8
from .metrics import ssim_per_image
from .prefetch import epochs, host_syncs_forbidden, to_device_ahead


@dataclass
class TrainConfig:
    data: list[str]
    out: str = "runs/train"
    teacher: str = "demo"  # demo | wan2.1 | wan2.2
    vae: str | None = None  # local path to the Wan VAE (diffusers folder or single file)
    model: str = "xs"
    size: tuple[int, int] = (256, 256)
    frames: int = 9  # pixel frames per clip, 4k+1
    clips: int = 256  # clips encoded once into the latent cache
    batch: int = 2  # per process
    steps: int = 1000
    minutes: float | None = None  # stop earlier when this much wall time has passed
    lr: float | None = None  # None: 1e-4 x 256/width (wider models take smaller Adam steps)
    warmup: int | None = None  # None: 50 steps per clip of the global batch, at least 100
    passthrough_lr: float | None = None  # lr factor of embed/time_up/head; None: 0.1 from --init teacher, else 1
    weight_decay: float = 0.01
    ema: float = 0.999
    grad_clip: float = 1.0
    pixel_loss: str | None = None  # l1 | mse (mse targets PSNR directly); None: mse from --init teacher, else l1
    ssim_weight: float | None = None  # None: 0.05 from --init teacher, else 0.2
    eval_every: int = 200
    log_every: int = 10
    holdout: list[str] = field(default_factory=list)  # "file" or "file:start-end" kept out of training
    eval_data: list[str] = field(default_factory=list)  # clips for periodic eval (default: the holdout)
    eval_frames: int = 25
    grad_checkpoint: bool | None = None  # None: only when the step's activations are large (see needs_checkpointing)
    precision: str = "auto"  # auto | bf16 | fp32: bf16 autocast on CUDA, and on CPUs with AMX bf16 tiles
    compile: bool = False  # torch.compile the unrolled clip + loss (static shapes): pays on GPUs, not on CPUs
    sync_debug: bool = False  # CUDA: every step after the first under set_sync_debug_mode("error") (log/eval outside)
    init: str = "random"  # random | teacher (a linear teacher's exact inverse, see linear_init.py) | a checkpoint path
    resume: bool = False
    seed: int = 0
    device: str | None = None


def setup_distributed(device: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun: one process per GPU (NCCL), or gloo on the CPU."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return rank, dist.get_world_size(), torch.device(f"cuda:{torch.cuda.current_device()}" if use_cuda else "cpu")


def default_lr(c: ModelConfig) -> float:
    """1e-4 for xs (width 256), scaled as 1/width: Adam moves every weight by ~lr a step, and a wider layer
    sums more of those moves into each output."""
    return 1e-4 * 256 / c.dim


def default_warmup(global_batch: int) -> int:
    """Longer warm-up for larger batches (they are run at the same peak rate with cleaner, larger updates)."""
    return max(100, 50 * global_batch)


def lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


LUMA = (0.2126, 0.7152, 0.0722)  # BT.709


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, ssim_weight: float, pixel: str = "l1") -> torch.Tensor:
    """L1 (or MSE) on [B, 3, T, H, W] in [-1, 1], plus (1 - SSIM) of the luma (a third of the cost of SSIM per
    channel, where most of the structure is)."""
    l1 = F.l1_loss(pred, target) if pixel == "l1" else F.mse_loss(pred, target)
    if not ssim_weight:
        return l1
    return l1 + ssim_weight * (1 - ssim_per_image(luma_frames(pred), luma_frames(target)).mean())


def luma_frames(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> luma [B*T, 1, H, W] in [0, 1]. Python-float weights: a weight tensor built
    from a list would be a synchronizing host-to-device copy every step."""
    r, g, b = x.float().clamp(-1, 1).unbind(1)
    return ((LUMA[0] / 2) * r + (LUMA[1] / 2) * g + (LUMA[2] / 2) * b + 0.5).flatten(0, 1)[:, None]


@torch.no_grad()
def update_ema(ema: AveragedModel, model: torch.nn.Module, decay: float, first: bool) -> None:
    """ema <- decay * ema + (1 - decay) * model in one foreach lerp (`first`: a copy), as
    AveragedModel.update_parameters with get_ema_multi_avg_fn does, but without its per-step copy of the CPU
    step counter to the device (a host sync). The counter stays AveragedModel's, so its state_dict is unchanged;
    the caller knows whether this is the first update (int(ema.n_averaged) == 0, read once before the steps)."""
    averaged, current = list(ema.module.parameters()), [p.detach() for p in model.parameters()]
    if first:
        torch._foreach_copy_(averaged, current)
    else:
        torch._foreach_lerp_(averaged, current, 1 - decay)
    ema.n_averaged += 1


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float, passthrough_lr: float):
    """Blocks at `lr`; embed, time_up and head (the pass-through path of a teacher init) at lr x passthrough_lr.
    Decay matrices only (norms and biases are left alone), and none on a slowed pass-through path: it holds the
    teacher's inverse, not noise to shrink."""
    blocks = {id(p) for blk in [*model.blocks, *model.refine] for p in blk.parameters()}
    groups = []
    for in_blocks in (True, False):
        rate = lr if in_blocks else lr * passthrough_lr
        decay = weight_decay if in_blocks or passthrough_lr == 1 else 0.0
        params = [p for p in model.parameters() if (id(p) in blocks) == in_blocks]
        groups += [{"params": [p for p in params if p.ndim >= 2], "weight_decay": decay, "lr": rate},
                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": rate}]
    return [g for g in groups if g["params"]]


def needs_checkpointing(c: ModelConfig, batch: int, latent_frames: int, gh: int, gw: int) -> bool:
    """Recompute activations in backward only when storing them would be large: above 2^24 token-channels
    per step (XL at 720p and batch 1 is 39 M; s at 512x512 and batch 8 is 12.6 M, ~12 GB of activations)."""
    return batch * latent_frames * gh * gw * c.dim > 2**24


def pick_autocast(precision: str, device: torch.device):
    """bf16 autocast on CUDA and on CPUs with AMX bf16 tiles (matmuls ~1.5-2x faster there); float32 otherwise."""
    if precision not in ("auto", "bf16", "fp32"):
        raise FlashdecodeError(f"--precision {precision!r}: choose auto, bf16 or fp32")
    amx = device.type == "cpu" and getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    bf16 = precision == "bf16" or (precision == "auto" and (device.type == "cuda" or amx))
    return torch.autocast(device.type, torch.bfloat16, enabled=bf16), bf16


def step_flops(c: ModelConfig, batch: int, latent_frames: int, gh: int, gw: int) -> float:
    """Model FLOPs of one training step: the bench's forward count x3 (forward + backward)."""
    return 3 * batch * flops_per_clip(c, gh, gw, latent_frames)


def check_config(cfg: TrainConfig) -> None:
    """Refuse impossible settings before any work (one error line each), not as a traceback mid-run."""
    from ..model import VARIANTS

    if cfg.model not in VARIANTS:
        raise FlashdecodeError(f"--model {cfg.model!r}: choose one of {', '.join(VARIANTS)}")
    for name, value in (("--lr", cfg.lr), ("--passthrough-lr", cfg.passthrough_lr)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise FlashdecodeError(f"{name} {value}: must be a positive number")
    if not 0 <= cfg.ema < 1:
        raise FlashdecodeError(f"--ema {cfg.ema}: must be in [0, 1), e.g. 0.999")
    for name, value in (("--batch", cfg.batch), ("--steps", cfg.steps), ("--clips", cfg.clips),
                        ("--eval-every", cfg.eval_every), ("--log-every", cfg.log_every)):
        if value < 1:
            raise FlashdecodeError(f"{name} {value}: must be at least 1")
    if cfg.eval_frames < 1 or (cfg.eval_frames - 1) % 4:
        raise FlashdecodeError(f"--eval-frames {cfg.eval_frames} is not 4k+1 (1, 5, 9, 13, ...)")
    if cfg.init == "teacher":  # the exact inverse needs a linear teacher and room for it (linear_init.py)
        if cfg.teacher != "demo":
            raise FlashdecodeError(f"--init teacher needs a linear teacher (demo): the {cfg.teacher} VAE has no exact "
                                   "inverse to start from; use --init random or a decoder checkpoint")
        c = ModelConfig.build(cfg.model, "demo")
        if (c.in_channels + 1) * c.time_up > c.dim:
            raise FlashdecodeError(f"--init teacher: model {cfg.model} (width {c.dim}) is too narrow to hold the demo "
                                   f"codec's inverse (width {(c.in_channels + 1) * c.time_up} needed); use --model xs or wider")
    elif cfg.init != "random":
        if not Path(cfg.init).is_file():
            raise FlashdecodeError(f"--init {cfg.init}: choose random, teacher, or the path of a decoder .safetensors")
        from ..checkpoint import read_metadata

        meta = read_metadata(cfg.init)
        if meta.get("format") != "flashdecode":
            raise FlashdecodeError(f"--init {cfg.init} is not a flashdecode decoder checkpoint; pass random, teacher "
                                   "or a .safetensors file that `flashdecode train` wrote")
        if meta.get("variant") != cfg.model:
            raise FlashdecodeError(f"--init {cfg.init} holds model {meta.get('variant')!r}, not {cfg.model!r}; "
                                   f"pass --model {meta.get('variant')}")
    if cfg.pixel_loss not in (None, "l1", "mse"):
        raise FlashdecodeError(f"--pixel-loss {cfg.pixel_loss!r}: choose l1 or mse")


def init_from_checkpoint(model, path, latent_space: str) -> dict:
    """Fine-tune: start from a flashdecode checkpoint of the same variant and latent space (float16 files too).
    Returns the checkpoint's provenance, which the new run's checkpoints carry on (what the start was trained on)."""
    from ..checkpoint import check_fits, load_checkpoint, load_weights, read_metadata

    meta = read_metadata(path)  # format and variant were checked by check_config
    if meta.get("latent_space") != latent_space:
        raise FlashdecodeError(f"--init {path} decodes the {meta.get('latent_space')!r} latent space, the teacher "
                               f"makes {latent_space!r}; pick the matching --teacher or checkpoint")
    check_fits(path, model.config)  # names and shapes from the header, before a tensor is read
    state, _ = load_checkpoint(path)
    load_weights(model, state, path)
    return meta.get("provenance") or {}


TRAIN_STATE_KEYS = ("model", "ema", "opt", "sched", "step")


def read_train_state(path: Path, model) -> dict:
    """--resume: the run's train_state.pt read as plain tensors and containers (weights_only: nothing is unpickled),
    checked before any clip is encoded: what `train` writes, with model weights that fit `model` and are finite
    (they are loaded into it). Anything else is one line."""
    from ..checkpoint import load_weights

    if not path.is_file():
        raise FlashdecodeError(f"--resume: no {path}; start without --resume or point --out at the run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle, zip and EOF errors all mean: not a state train wrote)
        import pickle

        # not torch's own message: it offers to unpickle the file if you trust it
        what = "it holds Python objects besides tensors, which are never unpickled" if isinstance(e, pickle.UnpicklingError) \
            else "it is not a file torch.save wrote"
        raise FlashdecodeError(f"--resume: {path} is not a training state flashdecode wrote ({what}); "
                               "start without --resume or in a new --out") from None
    missing = [k for k in TRAIN_STATE_KEYS if not isinstance(state, dict) or k not in state]
    best = None if missing else state.get("best")
    well_formed = not missing and isinstance(state["model"], dict) and type(state["step"]) is int and state["step"] >= 0 \
        and all(isinstance(v, torch.Tensor) for v in state["model"].values()) \
        and isinstance(state.get("evals", []), list) \
        and (best is None or isinstance(best, dict) and isinstance(best.get("psnr"), float) and "step" in best)
    if not well_formed:
        what = f"it has no {missing[0]!r}" if missing else "its model, step, best or evals entry is malformed"
        raise FlashdecodeError(f"--resume: {path} is not a training state flashdecode wrote ({what}); "
                               "start without --resume or in a new --out")
    load_weights(model, state["model"], path)
    return state


def resume_optimizer(path: Path, state: dict, ema, opt, sched) -> None:
    """The rest of a checked train_state.pt: EMA weights, optimizer moments and schedule, each of the shape and
    type this run's own have, and finite (a NaN moment would turn every weight NaN at the first step)."""
    from ..checkpoint import check_finite

    def refuse(why: str) -> FlashdecodeError:
        return FlashdecodeError(f"--resume: the EMA/optimizer/schedule state in {path} does not fit this run ({why}); "
                                "start without --resume or in a new --out")

    own = sched.state_dict()  # LambdaLR.load_state_dict copies any entry into the scheduler's attributes: check first
    junk = [k for k, v in state["sched"].items() if k not in own or type(v) is not type(own[k])] \
        if isinstance(state["sched"], dict) else ["sched"]
    if junk:
        raise refuse(f"schedule entry {str(junk[0])[:40]!r}")
    try:
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise refuse(str(e).splitlines()[0][:200]) from None
    moments = {f"opt state {i} {k}": v for i, entry in enumerate(opt.state.values()) for k, v in entry.items()
               if isinstance(v, torch.Tensor)}
    check_finite({**ema.state_dict(), **moments}, path, "its run diverged or the file is corrupt: resume from "
                 "another run's state or start without --resume")
    sched.load_state_dict(state["sched"])


def latent_cache(cfg: TrainConfig, teacher, console=None):
    """The run's training clips, encoded once by `teacher` into OUT/latent-cache (shards made by .build() or on
    first use); benchmarks/gpu_train.sh builds the same cache ahead of `train` through this."""
    from .latent_cache import LatentCache
    from .video_data import VideoClips

    clips = VideoClips(cfg.data, frames=cfg.frames, size=tuple(cfg.size), num_clips=cfg.clips, seed=cfg.seed,
                       holdout=cfg.holdout)
    return LatentCache(clips, teacher, Path(cfg.out) / "latent-cache", console=console, uint8_pixels=True)


def train(cfg: TrainConfig, console=None) -> Path:
    from rich.console import Console

    from .evaluate import evaluate
    from .teachers import load_teacher
    from .video_data import eval_clips

    check_config(cfg)
    rank, world, device = setup_distributed(cfg.device)
    console = console or Console(stderr=True, quiet=rank != 0, log_path=False)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed + rank)
    autocast, bf16 = pick_autocast(cfg.precision, device)
    # bf16 activations into float32 norm weights take RMSNorm's unfused path: correct, just slower.
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")

    teacher = load_teacher(cfg.teacher, cfg.vae, device=device)
    space = teacher.latent_space.name
    # The model and its start before the clips are encoded: a checkpoint that does not fit is one line, not minutes in.
    mcfg = ModelConfig.build(cfg.model, space)
    model = build_model(mcfg, device, seed=cfg.seed)
    init_provenance = None  # a checkpoint's own provenance, when the run fine-tunes one
    if cfg.init == "teacher":
        from .linear_init import init_from_linear_teacher

        init_from_linear_teacher(model, teacher)
    elif cfg.init != "random":
        init_provenance = init_from_checkpoint(model, cfg.init, space)
    state_path = out / "train_state.pt"
    resumed = read_train_state(state_path, model) if cfg.resume else None  # checked before the clips are encoded
    dataset = latent_cache(cfg, teacher, console)
    dataset.build(rank, world)  # encode once (shards split across ranks); later epochs and runs read the cache
    if world > 1:
        dist.barrier()

    latent_frames = 1 + (cfg.frames - 1) // 4
    gh, gw = (n // mcfg.pixel_patch for n in cfg.size)  # one token per 16x16 pixels
    checkpointing = (needs_checkpointing(mcfg, cfg.batch, latent_frames, gh, gw) if cfg.grad_checkpoint is None
                     else cfg.grad_checkpoint)
    for blk in [*model.blocks, *model.refine]:
        blk.grad_checkpoint = checkpointing
    lr = cfg.lr if cfg.lr is not None else default_lr(mcfg)
    warmup = cfg.warmup if cfg.warmup is not None else default_warmup(cfg.batch * world)
    fine_tune = cfg.init != "random"  # from the teacher's inverse or a trained decoder: a start worth keeping
    passthrough = cfg.passthrough_lr if cfg.passthrough_lr is not None else (0.1 if fine_tune else 1.0)
    # A teacher's linear inverse is the least-squares optimum among linear decoders: an L1- or SSIM-heavy loss
    # would first trade PSNR away from it (and from a decoder fine-tuned past it), so from either the loss is MSE
    # with a light SSIM term.
    pixel_loss = cfg.pixel_loss or ("mse" if fine_tune else "l1")
    ssim_weight = cfg.ssim_weight if cfg.ssim_weight is not None else (0.05 if fine_tune else 0.2)
    ema = AveragedModel(model)  # the container and its state_dict; update_ema averages (one foreach lerp per step)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay, lr, passthrough), lr=lr, betas=(0.9, 0.95),
                            fused=True)  # one kernel over all parameters (CUDA and CPU)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, cfg.steps))
    step, best = 0, None
    history: list[dict] = []  # every eval: {"step", "psnr", "ssim", ...}
    if resumed is not None:
        resume_optimizer(state_path, resumed, ema, opt, sched)
        step, best, history = resumed["step"], resumed.get("best"), resumed.get("evals", [])
        console.log(f"resumed {state_path} at step {step}")
    net = DDP(model, broadcast_buffers=False) if world > 1 else model

    def loss_fn(latents, pixels):
        with autocast:
            pred = net(latents)
        # The loss in float32, outside autocast: SSIM's variances (E[x^2] - E[x]^2) cancel catastrophically in
        # bf16, and a noisy SSIM gradient was what pulled bf16 training below its teacher-init start.
        return reconstruction_loss(pred.float(), pixels, ssim_weight, pixel_loss), pred

    if cfg.compile:
        loss_fn = torch.compile(loss_fn, dynamic=False)  # one clip shape: the unrolled frames become one graph

    sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=True, seed=cfg.seed, drop_last=True)
    cuda = device.type == "cuda"  # a GPU step is short: read the next batch in worker processes meanwhile
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch, sampler=sampler, drop_last=True,
                                         num_workers=2 if cuda else 0, pin_memory=cuda, persistent_workers=cuda)
    eval_sources = cfg.eval_data or cfg.holdout
    eval_set = list(eval_clips(eval_sources, frames=cfg.eval_frames, size=tuple(cfg.size))) if eval_sources else []

    def evaluate_ema() -> dict:
        dec = Decoder(copy.deepcopy(ema.module), teacher.latent_space)
        rows = evaluate(dec, eval_set, teacher)
        return rows[-1] if rows else {}

    def save_state() -> None:
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "step": step, "best": best, "evals": history,
                    "config": json.loads(json.dumps(asdict(cfg)))}, state_path.with_suffix(".tmp"))
        os.replace(state_path.with_suffix(".tmp"), state_path)

    def save_decoder(metrics: dict) -> Path:
        provenance = {"teacher": cfg.teacher, "data": [str(d) for d in cfg.data], "holdout": cfg.holdout,
                      "steps": step, "size": list(cfg.size), "frames": cfg.frames, "clips": cfg.clips,
                      "world_size": world, "eval": metrics, "date": time.strftime("%Y-%m-%d"), "init": cfg.init}
        if init_provenance is not None:  # a fine-tune: the lineage of its start travels with it
            provenance["init_provenance"] = init_provenance
        return save_checkpoint(out / "decoder.safetensors", ema.module, space, provenance)

    def eval_and_save() -> None:
        """Evaluate the EMA weights; keep them as decoder.safetensors only if they are the best so far."""
        nonlocal best
        out.mkdir(parents=True, exist_ok=True)
        metrics = evaluate_ema() if eval_set else {}
        if metrics:
            history.append({"step": step, **metrics})
            kept = best is None or metrics["psnr"] >= best["psnr"]
            console.log(f"eval @ {step}: PSNR {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.4f} (EMA)"
                        + ("" if kept else f"; best stays {best['psnr']:.2f} dB @ {best['step']}"))
            if kept:
                best = {"step": step, **metrics}
                save_decoder(metrics)
        else:
            save_decoder({})  # nothing to judge by: the latest EMA weights
        save_state()

    flops = step_flops(mcfg, cfg.batch * world, latent_frames, gh, gw)
    console.log(f"training {cfg.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M) for {space} "
                f"on {len(dataset)} cached clips of {cfg.frames}x{cfg.size[0]}x{cfg.size[1]}, {world} process(es), "
                f"{device}, {'bf16' if bf16 else 'fp32'}, lr {lr:.1e} (pass-through x{passthrough:g}), "
                f"warm-up {warmup}, {pixel_loss} + {ssim_weight:g} x (1 - SSIM), grad checkpointing {'on' if checkpointing else 'off'}"
                + (", compiled" if cfg.compile else ""))
    start = time.time()
    if rank == 0 and not cfg.resume and eval_set:
        eval_and_save()  # the starting point: nothing worse is ever saved
    model.train()
    # Sums stay on the device (no host sync per step); read once per log line. train_log: (step, loss, PSNR).
    sums = torch.zeros(3, device=device)
    train_log: list[tuple[int, float, float]] = []
    window_start, window_steps, steps_done, timed = time.time(), 0, 0, 0.0
    batches = to_device_ahead(epochs(loader, sampler), device)  # pinned, non_blocking, one step ahead

    def done() -> bool:
        return step >= cfg.steps or bool(cfg.minutes and time.time() - start > 60 * cfg.minutes)

    ema_updates = int(ema.n_averaged)  # a CPU counter, read here once: update_ema's first update copies
    last = done()
    while not last:
        # Nothing in here waits for the device (sync_debug: any wait raises), except on the first step of a run,
        # where the fused optimizer creates its state.
        with host_syncs_forbidden(cfg.sync_debug and steps_done > 0, device):
            pixels, latents = next(batches)
            pixels = from_uint8(pixels)
            loss, pred = loss_fn(latents, pixels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
            opt.step()
            sched.step()
            update_ema(ema, model, cfg.ema, first=ema_updates == 0)
            ema_updates += 1
            with torch.no_grad():
                mse = (pred.detach().float().clamp(-1, 1) - pixels).square().mean() / 4  # on [0, 1]
                sums += torch.stack([loss.detach().float(), -10 * torch.log10(mse.clamp_min(1e-12)), sums.new_ones(())])
        step += 1
        window_steps += 1
        steps_done += 1
        last = done()
        if step % cfg.log_every == 0 or last:
            l, p, n = sums.tolist()  # the one host sync per log line
            sums.zero_()
            train_log.append((step, l / n, p / n))
            elapsed = time.time() - window_start  # training time only: evaluations are not in the window
            rate = window_steps / elapsed if elapsed > 0 else float("nan")
            eta = (cfg.steps - step) / rate if rate > 0 else float("nan")
            timed += elapsed
            if rank == 0:
                console.log(f"step {step}/{cfg.steps}  loss {l / n:.4f}  train PSNR {p / n:.2f} dB  "
                            f"{rate:.2f} steps/s  {rate * cfg.batch * world:.1f} samples/s  "
                            f"{rate * flops / 1e12:.3g} TFLOP/s  lr {sched.get_last_lr()[0]:.2e}  ETA {eta / 60:.1f} min")
            window_start, window_steps = time.time(), 0
        if step % cfg.eval_every == 0 and not last and rank == 0:
            eval_and_save()
            window_start = time.time()
    batches.close()
    final = None
    if rank == 0:
        eval_and_save()
        final = out / "decoder.safetensors"
        first, latest = (train_log[0], train_log[-1]) if train_log else ((None,) * 3,) * 2  # first/last log windows
        summary = {"steps": step, "seconds": time.time() - start, "train_seconds": timed,
                   "steps_per_second": steps_done / timed if timed > 0 else None, "eval": best or {},
                   "start": history[0] if history else {}, "evals": history,
                   "precision": "bf16" if bf16 else "fp32", "grad_checkpoint": checkpointing,
                   "lr": lr, "warmup": warmup, "passthrough_lr": passthrough, "pixel_loss": pixel_loss,
                   "ssim_weight": ssim_weight,
                   "train_loss_first": first[1], "train_loss_last": latest[1],
                   "train_psnr_first": first[2], "train_psnr_last": latest[2]}
    if world > 1:  # every rank reports a checksum of its weights: DDP keeps them identical
        checksums = [None] * world
        dist.all_gather_object(checksums, float(sum(p.double().sum() for p in model.parameters())))
        if rank == 0:
            summary["param_checksums"] = checksums
        dist.destroy_process_group()
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        console.log(f"saved {final} (best EMA eval: {json.dumps(best) if best else 'no eval clips'})")
    return final

