"""Train a FlashDecoder for a teacher's latent space on real video.

Data flows one way: videos -> random clips -> teacher encoder (once, cached as safetensors shards) ->
(pixels, latents) batches -> the streaming path unrolled over each clip (no masks, as at inference) ->
L1 + (1 - SSIM) loss. AdamW with warm-up and cosine decay, gradient clipping, EMA weights, periodic
evaluation and checkpoints, --resume. Under `torchrun --nproc-per-node N` the same code trains with DDP.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..checkpoint import save_checkpoint
from ..engine import Decoder, build_model
from ..errors import FlashdecodeError
from ..model import ModelConfig
from .metrics import ssim_per_image


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
    lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 0.01
    ema: float = 0.999
    grad_clip: float = 1.0
    pixel_loss: str = "l1"  # l1 | mse (mse targets PSNR directly)
    ssim_weight: float = 0.2
    eval_every: int = 200
    log_every: int = 10
    holdout: list[str] = field(default_factory=list)  # "file" or "file:start-end" kept out of training
    eval_data: list[str] = field(default_factory=list)  # clips for periodic eval (default: the holdout)
    eval_frames: int = 25
    grad_checkpoint: bool = True
    init: str = "random"  # random | teacher (a linear teacher's exact inverse, see linear_init.py)
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


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, ssim_weight: float, pixel: str = "l1") -> torch.Tensor:
    """L1 (or MSE) plus a structural term; both on [B, 3, T, H, W] in [-1, 1]."""
    l1 = F.l1_loss(pred, target) if pixel == "l1" else F.mse_loss(pred, target)
    if not ssim_weight:
        return l1
    frames = lambda x: ((x.float().clamp(-1, 1) + 1) / 2).transpose(1, 2).flatten(0, 2)[:, None]  # noqa: E731
    return l1 + ssim_weight * (1 - ssim_per_image(frames(pred), frames(target)).mean())


def param_groups(model: torch.nn.Module, weight_decay: float):
    """Decay matrices only; norms and biases are left alone."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train(cfg: TrainConfig, console=None) -> Path:
    from rich.console import Console

    from .evaluate import evaluate
    from .latent_cache import LatentCache
    from .teachers import load_teacher
    from .video_data import VideoClips, eval_clips

    rank, world, device = setup_distributed(cfg.device)
    console = console or Console(stderr=True, quiet=rank != 0, log_path=False)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed + rank)

    teacher = load_teacher(cfg.teacher, cfg.vae, device=device)
    space = teacher.latent_space.name
    clips = VideoClips(cfg.data, frames=cfg.frames, size=tuple(cfg.size), num_clips=cfg.clips, seed=cfg.seed,
                       holdout=cfg.holdout)
    dataset = LatentCache(clips, teacher, out / "latent-cache", console=console)
    dataset.build(rank, world)  # encode once (shards split across ranks); later epochs and runs read the cache
    if world > 1:
        dist.barrier()

    model = build_model(ModelConfig.build(cfg.model, space), device, seed=cfg.seed)
    if cfg.init == "teacher":
        from .linear_init import init_from_linear_teacher

        init_from_linear_teacher(model, teacher)
    for blk in [*model.blocks, *model.refine]:
        blk.grad_checkpoint = cfg.grad_checkpoint
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema))
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95),
                            fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    step = 0
    state_path = out / "train_state.pt"
    if cfg.resume:
        if not state_path.exists():
            raise FlashdecodeError(f"--resume: no {state_path}; start without --resume or point --out at the run")
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = state["step"]
        console.log(f"resumed {state_path} at step {step}")
    net = DDP(model, broadcast_buffers=False) if world > 1 else model

    sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch, sampler=sampler, drop_last=True)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    eval_sources = cfg.eval_data or cfg.holdout
    eval_set = list(eval_clips(eval_sources, frames=cfg.eval_frames, size=tuple(cfg.size))) if eval_sources else []

    def evaluate_ema() -> dict:
        dec = Decoder(copy.deepcopy(ema.module), teacher.latent_space)
        rows = evaluate(dec, eval_set, teacher)
        return rows[-1] if rows else {}

    def save(metrics: dict) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        provenance = {"teacher": cfg.teacher, "data": [str(d) for d in cfg.data], "holdout": cfg.holdout,
                      "steps": step, "size": list(cfg.size), "frames": cfg.frames, "clips": cfg.clips,
                      "world_size": world, "eval": metrics, "date": time.strftime("%Y-%m-%d")}
        path = save_checkpoint(out / "decoder.safetensors", ema.module, space, provenance)
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "step": step, "config": json.loads(json.dumps(asdict(cfg)))},
                   state_path.with_suffix(".tmp"))
        os.replace(state_path.with_suffix(".tmp"), state_path)
        return path

    console.log(f"training {cfg.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M) for {space} "
                f"on {len(dataset)} cached clips of {cfg.frames}x{cfg.size[0]}x{cfg.size[1]}, {world} process(es), {device}")
    start, history, epoch, metrics = time.time(), [], 0, {}
    model.train()
    while step < cfg.steps and not (cfg.minutes and time.time() - start > 60 * cfg.minutes):
        sampler.set_epoch(epoch)
        epoch += 1
        for pixels, latents in loader:
            pixels, latents = pixels.to(device, non_blocking=True), latents.to(device, non_blocking=True)
            with autocast:
                pred = net(latents)
                loss = reconstruction_loss(pred, pixels, cfg.ssim_weight, cfg.pixel_loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            ema.update_parameters(model)
            step += 1
            with torch.no_grad():
                mse = F.mse_loss(pred.detach().float().clamp(-1, 1), pixels) / 4  # on [0, 1]
                history.append((loss.item(), 10 * math.log10(1 / max(mse.item(), 1e-12))))
            if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
                n = len(history[-cfg.log_every:])
                l, p = (sum(h[i] for h in history[-n:]) / n for i in (0, 1))
                rate = step / (time.time() - start) if step else 0.0
                eta = (cfg.steps - step) / rate if rate else float("nan")
                console.log(f"step {step}/{cfg.steps}  loss {l:.4f}  train PSNR {p:.2f} dB  "
                            f"{rate:.2f} steps/s  lr {sched.get_last_lr()[0]:.2e}  ETA {eta / 60:.1f} min")
            if step % cfg.eval_every == 0 and step < cfg.steps and rank == 0:
                metrics = evaluate_ema() if eval_set else {}
                if metrics:
                    console.log(f"eval @ {step}: PSNR {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.4f} (EMA)")
                save(metrics)
            if step >= cfg.steps or (cfg.minutes and time.time() - start > 60 * cfg.minutes):
                break
    final = None
    if rank == 0:
        metrics = evaluate_ema() if eval_set else {}
        final = save(metrics)
        window = max(1, min(cfg.log_every, len(history) // 2))  # mean of the first and of the last log window
        mean = lambda rows, i: sum(r[i] for r in rows) / len(rows) if rows else None  # noqa: E731
        summary = {"steps": step, "seconds": time.time() - start, "eval": metrics,
                   "train_loss_first": mean(history[:window], 0), "train_loss_last": mean(history[-window:], 0),
                   "train_psnr_first": mean(history[:window], 1), "train_psnr_last": mean(history[-window:], 1)}
    if world > 1:  # every rank reports a checksum of its weights: DDP keeps them identical
        sums = [None] * world
        dist.all_gather_object(sums, float(sum(p.double().sum() for p in model.parameters())))
        if rank == 0:
            summary["param_checksums"] = sums
        dist.destroy_process_group()
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        console.log(f"saved {final} ({json.dumps(summary['eval']) if summary['eval'] else 'no eval clips'})")
    return final
