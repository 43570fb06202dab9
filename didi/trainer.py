"""One training loop for every method: DDP, AMP, EMA, schedules, metrics, atomic checkpoints, exact resume.

A method owns its networks as named *parts* (the teacher has one, "model"; distillation has a
student and a discriminator). The trainer gives each part an optimizer, a warmup + decay
schedule, an EMA copy and a grad clip, and calls `method.step(batch, generator, ctx)`, which
computes losses and calls `ctx.update(name, loss)` for each part it trains.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from . import fileio, runs
from .config import RunConfig
from .errors import DidiError


@dataclass
class PartSpec:
    module: nn.Module
    lr: float
    max_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.0
    decay: str = "cosine"  # "cosine" or "linear" after the warmup
    params: list[nn.Parameter] | None = None  # default: every parameter that requires grad


@dataclass
class Part:
    spec: PartSpec
    wrapped: nn.Module  # what forward passes use (DDP and/or compiled)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: list[torch.Tensor] | None = None
    params: list[nn.Parameter] = field(default_factory=list)

    @property
    def module(self) -> nn.Module:
        return self.spec.module


def lr_lambda(spec: PartSpec):
    def f(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        progress = min(1.0, (step - spec.warmup_steps) / max(1, spec.max_steps - spec.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if spec.decay == "cosine" else 1 - progress
        return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * shape
    return f


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; gloo on CPU, NCCL on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank=dist.get_rank(), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def check_device(name: str) -> str:
    """`name` if this torch can run on it ("auto": cuda when available, else cpu); else one clear error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise DidiError(f"device {name!r} is not a device name torch knows; use cpu, cuda or auto") from None
    kind = dev.type
    if kind == "cuda" and not torch.cuda.is_available():
        raise DidiError(f"device {name!r}: this torch sees no CUDA device (a CPU build, or no GPU); use cpu")
    if kind == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DidiError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise DidiError(f"device {name!r}: this torch has no MPS backend; use cpu")
    if kind not in ("cpu", "cuda", "mps"):
        raise DidiError(f"device {name!r}: didi runs on cpu, cuda or mps")
    return name


def resolve_device(name: str, d: Dist) -> str:
    name = check_device(name)
    if name == "cuda" and d.world > 1:
        name = f"cuda:{d.local_rank}"
    if name.startswith("cuda"):
        torch.cuda.set_device(torch.device(name))
    return name


class Context:
    """What a method's step sees: its parts, the device, DDP facts and the autocast context."""

    def __init__(self, parts: dict[str, Part], device: str, d: Dist, bf16: bool, global_batch: int,
                 cpu_bf16: bool = False):
        self.parts, self.device, self.dist, self.global_batch = parts, device, d, global_batch
        self.bf16 = bf16 and (device.startswith("cuda") or cpu_bf16)

    def autocast(self):
        if self.bf16:
            return torch.autocast("cuda" if self.device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def update(self, name: str | tuple[str, ...], loss: torch.Tensor) -> float:
        """Backward, clip, optimizer and schedule step, EMA update. Returns the pre-clip grad norm (of the first
        part). A tuple of names steps several parts on one backward of a loss they share (each clipped alone)."""
        names = (name,) if isinstance(name, str) else tuple(name)
        for n in names:
            self.parts[n].optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms = []
        for n in names:
            part = self.parts[n]
            clip = part.spec.grad_clip if part.spec.grad_clip > 0 else float("inf")
            norms.append(torch.nn.utils.clip_grad_norm_(part.params, clip))
            part.optimizer.step()
            part.scheduler.step()
            if part.ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(part.ema, [p.detach() for p in part.params], 1 - part.spec.ema)
        return float(norms[0])

    @contextlib.contextmanager
    def ema_weights(self, name: str):
        """Temporarily swap a part's EMA weights in (for validation and export)."""
        part = self.parts[name]
        if part.ema is None:
            yield part.module
            return
        backup = [p.detach().clone() for p in part.params]
        with torch.no_grad():
            for p, e in zip(part.params, part.ema):
                p.copy_(e)
        try:
            yield part.module
        finally:
            with torch.no_grad():
                for p, b in zip(part.params, backup):
                    p.copy_(b)

    def all_mean(self, x: torch.Tensor) -> torch.Tensor:
        if self.dist.world > 1:
            x = x.detach().clone()
            dist.all_reduce(x)
            x /= self.dist.world
        return x


def build_parts(specs: dict[str, PartSpec], device: str, d: Dist, compile_model: bool) -> dict[str, Part]:
    parts = {}
    for name, spec in specs.items():
        spec.module.to(device)
        params = spec.params if spec.params is not None else [p for p in spec.module.parameters() if p.requires_grad]
        wrapped = spec.module
        if compile_model:
            wrapped = torch.compile(wrapped)
        if d.world > 1:
            wrapped = nn.parallel.DistributedDataParallel(
                wrapped, device_ids=[d.local_rank] if device.startswith("cuda") else None,
                forward_sync_buffers=False)  # spectral-norm buffers update in place within a step
        opt = torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas,
                                weight_decay=spec.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec))
        ema = [p.detach().clone() for p in params] if spec.ema > 0 else None
        parts[name] = Part(spec=spec, wrapped=wrapped, optimizer=opt, scheduler=sched, ema=ema, params=params)
    return parts


def step_generator(seed: int, step: int) -> torch.Generator:
    """Per-step randomness that depends only on (seed, step): identical across ranks and across resumes."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Runs `method.step` over batches from `sampler`, with logging, validation and checkpoints."""

    def __init__(self, cfg: RunConfig, out: Path, method, specs: dict[str, PartSpec], train_blocks, valid_blocks,
                 d: Dist, device: str, progress: bool = True):
        from .data import BlockSampler

        self.cfg, self.out, self.method, self.dist, self.device = cfg, Path(out), method, d, device
        self.train_blocks, self.valid_blocks = train_blocks, valid_blocks
        t = cfg.train
        if t.batch_size % d.world:
            raise DidiError(f"train.batch_size {t.batch_size} must be divisible by the {d.world} processes")
        self.parts = build_parts(specs, device, d, t.compile)
        self.ctx = Context(self.parts, device, d, t.bf16, t.batch_size, t.cpu_bf16)
        self.sampler = BlockSampler(len(train_blocks), t.batch_size, t.seed)
        self.step = 0
        self.elapsed = 0.0
        self.progress = progress and d.main
        self.max_steps = t.max_steps

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "elapsed": self.elapsed,
            "config": self.cfg.to_dict(),
            "parts": {
                name: {
                    "module": p.module.state_dict(),
                    "optimizer": p.optimizer.state_dict(),
                    "scheduler": p.scheduler.state_dict(),
                    "ema": p.ema,
                }
                for name, p in self.parts.items()
            },
            "method": self.method.state_dict() if hasattr(self.method, "state_dict") else {},
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
        }

    def resume(self) -> None:
        """Continue from `out/checkpoint.pt` exactly where it stopped."""
        state, used = fileio.load_checkpoint(self.out / runs.CHECKPOINT, map_location=self.device)
        self.load_state_dict(state)
        if self.dist.main:
            note = fileio.truncate_metrics(self.out / runs.METRICS, self.step)  # later rows are logged again
            if note:
                print(f"didi: {note}")
            print(f"didi: resuming {self.out} at step {self.step}" + ("" if used.name == runs.CHECKPOINT
                                                                      else f" (from {used.name})"))

    def load_state_dict(self, state: dict) -> None:
        for name, p in self.parts.items():
            s = state["parts"][name]
            p.module.load_state_dict(s["module"])
            p.optimizer.load_state_dict(s["optimizer"])
            p.scheduler.load_state_dict(s["scheduler"])
            if p.ema is not None and s["ema"] is not None:
                for e, v in zip(p.ema, s["ema"]):
                    e.copy_(v.to(e.device))
        if hasattr(self.method, "load_state_dict"):
            self.method.load_state_dict(state["method"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.step, self.elapsed = state["step"], state["elapsed"]

    def save(self) -> None:
        if not self.dist.main:
            return
        fileio.save_checkpoint(self.state_dict(), self.out / runs.CHECKPOINT)  # the one before becomes .prev
        for filename, (part_name, getter) in self.method.exports().items():
            with self.ctx.ema_weights(part_name) as module:
                fileio.save_weights(getter(module), self.out / filename, metadata={"step": str(self.step)})

    def snapshot(self) -> None:
        """The sampling weights (the eval part's EMA) at this step, kept in snapshots/step_NNNNNN.safetensors."""
        if not self.dist.main:
            return
        for part_name, getter in self.method.exports().values():
            if part_name == self.method.eval_part:
                with self.ctx.ema_weights(part_name) as module:
                    fileio.save_weights(getter(module), self.out / runs.SNAPSHOTS / f"step_{self.step:06d}.safetensors",
                                      metadata={"step": str(self.step)})

    # -- loop --------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        if self.dist.main:
            with open(self.out / runs.METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    def validate(self) -> dict:
        from .data import iterate_blocks

        result = {}
        if self.dist.main and self.valid_blocks is not None and len(self.valid_blocks) > 0:
            batches = (x.to(self.device) for x in iterate_blocks(self.valid_blocks, self.cfg.train.batch_size,
                                                                 self.cfg.train.eval_batches))
            name = self.method.eval_part
            with self.ctx.ema_weights(name) as module:
                was_training = module.training
                module.eval()
                with self.ctx.autocast():
                    result = self.method.validate(module, batches, self.cfg.train.seed)
                module.train(was_training)
        if self.dist.world > 1:
            dist.barrier()
        return result

    def train(self, until_step: int | None = None) -> dict:
        from .data import BlockSampler

        t = self.cfg.train
        stop = min(self.max_steps, until_step) if until_step is not None else self.max_steps
        for p in self.parts.values():
            p.module.train()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=stop, initial=self.step, desc=f"train {self.method.name}", dynamic_ncols=True)
        last, v, validated_at, saved_at = {}, {}, None, None
        tokens_since, time_mark = 0, time.perf_counter()
        while self.step < stop:
            if t.max_minutes and self.elapsed >= t.max_minutes * 60:
                if self.dist.main:
                    print(f"didi: reached train.max_minutes={t.max_minutes} at step {self.step}")
                break
            step_start = time.perf_counter()
            idx = BlockSampler.rank_slice(self.sampler.next_indices(), self.dist.rank, self.dist.world)
            x = self.train_blocks.get(idx).to(self.device, non_blocking=True)
            metrics = self.method.step(x, step_generator(t.seed, self.step), self.ctx)
            loss = metrics["loss"]
            if not math.isfinite(loss):
                raise DidiError(f"loss became {loss} at step {self.step}; stopping (the last checkpoint in "
                                f"{self.out} is from before it). Lower the learning rate or check the data.")
            self.step += 1
            tokens_since += x.numel() * self.dist.world
            self.elapsed += time.perf_counter() - step_start
            if self.step % t.log_every == 0 or self.step == stop:
                now = time.perf_counter()
                last = {"step": self.step, **{k: round(float(v), 6) for k, v in metrics.items()},
                        "lr": self.parts[self.method.eval_part].scheduler.get_last_lr()[0],
                        "tokens_per_s": round(tokens_since / max(now - time_mark, 1e-9), 1),
                        "elapsed_s": round(self.elapsed, 2)}
                tokens_since, time_mark = 0, now
                self.log(last)
                if bar is not None:
                    keys = getattr(self.method, "progress_keys", None) or [
                        k for k in last if k not in ("step", "lr", "elapsed_s")]
                    bar.set_postfix({k: f"{last[k]:.4g}" for k in keys if k in last})
            if t.eval_every and self.step % t.eval_every == 0:
                v, validated_at = self.validate(), self.step
                if v:
                    self.log({"step": self.step, **v})
                    if bar is not None:
                        bar.write(f"step {self.step}: " + ", ".join(f"{k} {val:.4g}" for k, val in v.items()))
            if t.save_every and self.step % t.save_every == 0:
                self.save()
                saved_at = self.step
            if t.snapshot_every and self.step % t.snapshot_every == 0:
                self.snapshot()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if validated_at != self.step:  # the last step may have been validated already
            v = self.validate()
            if v:
                self.log({"step": self.step, **v})
        if saved_at != self.step:  # saving twice would make the previous checkpoint a copy of this one
            self.save()
        return {**last, **v}
