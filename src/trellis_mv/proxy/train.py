"""Train the proxy model: ``python -m trellis_mv.proxy.train --out weights.safetensors``.

Trained like TRELLIS.2's flow models: each example pairs a synthetic shape with ONE
rendered view, the image tokens are dropped to zeros with probability ``--cond-drop``
(so ``zeros_like(cond)`` is the unconditional branch), times are drawn from a
logit-normal distribution and both stages regress the flow velocity
``(1 - sigma_min) * eps - x_0``. The image encoder is trained jointly with the two
stages. Nothing here knows about multiple views: multi-view conditioning is tuning-free,
done at sampling time by the sampler patch. The views are mostly those users take
(:func:`random_views`).

Two steps train the same model. The default, fast step (:class:`FastStep`) renders
``--bank-views`` views of every training shape once, on the device, into a view bank
(cached in ``--bank-cache``), and trains on batches drawn from it with static shapes and no
host syncs (the texture stage on a packed layout, :mod:`trellis_mv.proxy._fast`), fused
AdamW on CUDA, a foreach EMA, optionally ``--compile``; the losses are read back every
``--log-every`` steps. ``--legacy`` is the step that trained the shipped weights: views
rendered every step.

A run can be split over several commands, on different machines: ``--state`` names a
folder (:mod:`trellis_mv.proxy._state`: float32 weights, the EMA and the AdamW moments in
16-bit halves, step, schedule, random states and loss log, in safetensors shards of at most
15 MiB, 58 MB in all) written every ``--state-every`` steps and when ``--time-limit`` or
``--wall-limit`` ends the command; the next command with the same ``--state`` continues where
it stopped, towards the same ``--steps`` (the cosine schedule runs over ``--steps``).
``--legacy`` runs use ``--ckpt`` instead (one 92 MB file). ``--data-cache`` keeps the
generated shapes on disk.

``--preset cpu`` is a reduced run for a laptop; ``--preset gpu`` is the run that produced
the shipped weights (it implies ``--legacy``); ``--preset h200`` is the fast run (see
``weights/TRAINING.md``).

>>> summary = train(steps=2, batch=4, shapes=8, seed=0, log_every=1, device="cpu", verbose=False, bank_views=1)
>>> sorted(summary["final_losses"]), summary["steps"]
(['structure', 'texture'], 2)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trellis_mv.proxy._data import make_shapes
from trellis_mv.proxy._fast import (
    PackedTexture,
    ViewBank,
    bank_bytes,
    build_bank,
    cosine_lr,
    ema_update,
    fast_losses,
    layout,
    plan_buckets,
)
from trellis_mv.proxy._models import ProxyConfig, ProxyModels, encode_structure, save_models
from trellis_mv.proxy._pipeline import NAMED_VIEWS, input_views
from trellis_mv.proxy._state import MAX_TOTAL, decode_rng, encode_rng, load_state, save_state, state_exists
from trellis_mv.sparse import SparseTensor

__all__ = ["PRESETS", "FastStep", "legacy_step", "main", "random_views", "train"]

SIGMA_MIN = 1e-5
#: Shapes of the fixed evaluation batches (the legacy run's batch, so its numbers compare).
EVAL_BATCH = 256
#: First seed of the held-out shapes (never trained on).
HELDOUT = 1_000_000_000
PRESETS: dict[str, dict[str, float | int]] = {
    "gpu": {"steps": 5200, "batch": 256, "shapes": 40000, "lr": 6e-4, "time_limit": 470},
    "cpu": {"steps": 300, "batch": 16, "shapes": 400, "lr": 5e-4, "time_limit": 900},
    "h200": {"steps": 12000, "batch": 1024, "shapes": 40000, "lr": 1e-3, "time_limit": 450},
}
#: Presets that run the legacy step (the shipped weights' run, reproducible as it was).
LEGACY_PRESETS = frozenset({"gpu"})


def random_views(n: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Training views, mostly the ones users take.

    70%: one of the eight azimuths at 45-degree steps, elevation 20 to 30 degrees (the
    named views are four of them); 5%: straight from the top; 25%: any azimuth at elevation
    -10 to 60 degrees.

    >>> views = random_views(1000, np.random.default_rng(0))
    >>> sum(az % 45 == 0 and 20 <= el <= 30 for az, el in views) > 600
    True
    """
    out = []
    for _ in range(n):
        u = rng.random()
        if u < 0.7:
            out.append((45.0 * int(rng.integers(8)), float(rng.uniform(20, 30))))
        elif u < 0.75:
            out.append(NAMED_VIEWS["top"])
        else:
            out.append((float(rng.uniform(0, 360)), float(rng.uniform(-10, 60))))
    return out


def model_images(occ: torch.Tensor, col: torch.Tensor, views: Sequence, size: int = 64, chunk: int = 256) -> torch.Tensor:
    """Renders at twice ``size``, box-filtered to ``size``: what preprocessing a larger image gives."""
    out = []
    for i in range(0, occ.shape[0], chunk):
        out.append(input_views(occ[i : i + chunk], col[i : i + chunk], views[i : i + chunk], size=size))
    return torch.cat(out)


def _gen(args: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    occ, col = make_shapes(range(*args))
    return occ, (col * 255).round().astype(np.uint8)


def dataset(shapes: int, workers: int = 1, cache: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Occupancy ``bool [S, 16, 16, 16]`` and colours ``float [S, 16, 16, 16, 3]`` of seeds ``0..S-1``.

    :param cache: an ``.npz`` file: read if it holds ``shapes`` shapes, else written.
    """
    if cache is not None and Path(cache).is_file():
        with np.load(cache) as f:
            if f["occ"].shape[0] == shapes:
                return torch.from_numpy(f["occ"]), torch.from_numpy(f["col"]).float() / 255
    step = max(1, math.ceil(shapes / max(workers, 1) / 4))
    ranges = [(a, min(a + step, shapes)) for a in range(0, shapes, step)]
    if workers > 1 and len(ranges) > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_gen, ranges))
    else:
        parts = [_gen(r) for r in ranges]
    occ = np.concatenate([p[0] for p in parts])
    col = np.concatenate([p[1] for p in parts])
    if cache is not None:
        np.savez(cache, occ=occ, col=col)
    return torch.from_numpy(occ), torch.from_numpy(col).float() / 255


def _noisy(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x_t = (1 - t) * x0 + (SIGMA_MIN + (1 - SIGMA_MIN) * t) * eps
    return x_t, (1 - SIGMA_MIN) * eps - x0


def losses(
    models: ProxyModels, occ: torch.Tensor, col: torch.Tensor, images: torch.Tensor, gen: torch.Generator,
    cond_drop: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Flow-matching losses of both stages on one batch (one view per shape)."""
    dev = occ.device
    b = occ.shape[0]
    tokens = models.encoder(images)
    keep = (torch.rand(b, generator=gen, device=dev) >= cond_drop).to(tokens.dtype)
    tokens = tokens * keep[:, None, None]

    def times(n: int) -> torch.Tensor:  # logit-normal(1, 1), as TRELLIS.2
        return torch.sigmoid(torch.randn(n, generator=gen, device=dev) + 1.0)

    x0 = encode_structure(occ)
    t = times(b)
    x_t, target = _noisy(x0, t[:, None, None, None, None], torch.randn(x0.shape, generator=gen, device=dev))
    loss_s = F.mse_loss(models.structure(x_t, 1000 * t, tokens).float(), target)

    coords = occ.nonzero().int()  # (b, x, y, z), batch-contiguous
    f0 = col[coords[:, 0], coords[:, 1], coords[:, 2], coords[:, 3]] * 2 - 1
    t2 = times(b)
    tv = t2[coords[:, 0].long()][:, None]
    f_t, target2 = _noisy(f0, tv, torch.randn(f0.shape, generator=gen, device=dev))
    pred = models.texture(SparseTensor(f_t, coords, b), 1000 * t2, tokens)
    loss_t = F.mse_loss(pred.feats.float(), target2)
    return {"structure": loss_s, "texture": loss_t}


def legacy_step(
    models: ProxyModels, ema_models: ProxyModels, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
    occ_all: torch.Tensor, col_all: torch.Tensor, rng: np.random.Generator, gen: torch.Generator, step: int, batch: int,
    cond_drop: float, ema: float,
) -> dict[str, float]:
    """One step of the legacy run: views rendered for the batch, sparse texture stage, per-parameter EMA.

    Its losses are read back to the host (``.item()``) every step. Kept to reproduce the
    shipped weights' run (``--legacy``) and as the baseline of ``benchmarks/train_step.py``.
    """
    dev = occ_all.device
    use_amp = dev.type == "cuda"
    idx = torch.from_numpy(rng.integers(0, occ_all.shape[0], size=batch)).to(dev)
    occ, col = occ_all[idx], col_all[idx]
    with torch.no_grad():
        images = model_images(occ, col, random_views(batch, rng))
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
        parts = losses(models, occ, col, images, gen, cond_drop)
    loss = parts["structure"] + parts["texture"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
    opt.step()
    sched.step()
    with torch.no_grad():
        decay = min(ema, (1 + step) / (10 + step))
        for pe, pm in zip(ema_models.parameters(), models.parameters()):
            pe.lerp_(pm, 1 - decay)
    return {k: v.item() for k, v in parts.items()}


def _train_legacy(
    steps: int = 300,
    batch: int = 16,
    shapes: int = 400,
    seed: int = 0,
    lr: float = 5e-4,
    cond_drop: float = 0.1,
    ema: float = 0.999,
    time_limit: float | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
    workers: int = 1,
    log_every: int = 50,
    verbose: bool = True,
    config: ProxyConfig | None = None,
    init: str | Path | None = None,
    ckpt: str | Path | None = None,
    ckpt_every: int = 1000,
    data_cache: str | Path | None = None,
) -> dict:
    """Train (or continue from ``ckpt``); returns a summary (losses, steps, seconds) and writes ``out`` if given.

    ``eval_losses`` are measured on one fixed batch (fixed views, noise and times) before
    and after this command's training, with the trained (not the averaged) weights.

    :param steps: the total number of steps of the run (over all commands that continue it).
    :param time_limit: stop this command after this many seconds of training (a checkpoint is written).
    :param ckpt: checkpoint file: continued from if it exists, written every ``ckpt_every`` steps and at the end.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    t0 = time.time()
    occ_all, col_all = dataset(shapes, workers, data_cache)
    occ_all, col_all = occ_all.to(dev), col_all.to(dev)
    state = torch.load(ckpt, map_location=dev, weights_only=True) if ckpt is not None and Path(ckpt).is_file() else None
    if state is not None:
        models = ProxyModels(ProxyConfig.from_dict(state["config"])).to(dev)
        models.load_state_dict(state["models"])
    elif init is not None:  # continue from earlier weights (their config wins)
        from trellis_mv.proxy._models import load_models

        models = load_models(init, dev).train()
    else:
        models = ProxyModels(config).to(dev)
    ema_models = copy.deepcopy(models).eval().requires_grad_(False)
    opt = torch.optim.AdamW(models.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    warmup = min(500, max(steps // 20, 1))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    )
    gen = torch.Generator(device=dev).manual_seed(seed)
    log: list[dict] = []
    first = 1
    trained_seconds = 0.0
    if state is not None:
        ema_models.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        rng.bit_generator.state = state["numpy_rng"]
        gen.set_state(state["torch_gen"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        log, first, trained_seconds = state["log"], state["step"] + 1, state["trained_seconds"]
    window: dict[str, list[float]] = state["window"] if state is not None else {"structure": [], "texture": []}
    use_amp = dev.type == "cuda"

    eb = min(batch, shapes)
    eval_views = random_views(eb, np.random.default_rng(seed + 1))
    eval_images = model_images(occ_all[:eb], col_all[:eb], eval_views)

    def evaluate() -> dict[str, float]:
        g = torch.Generator(device=dev).manual_seed(seed + 2)
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            return {k: float(v) for k, v in losses(models, occ_all[:eb], col_all[:eb], eval_images, g, 0.0).items()}

    def save_ckpt(step: int) -> None:
        if ckpt is None:
            return
        tmp = Path(str(ckpt) + ".tmp")
        torch.save(
            {
                "config": models.cfg.__dict__, "models": models.state_dict(), "ema": ema_models.state_dict(),
                "opt": opt.state_dict(), "sched": sched.state_dict(), "numpy_rng": rng.bit_generator.state,
                "torch_gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "log": log, "window": window, "step": step,
                "trained_seconds": trained_seconds + time.time() - t_start,
                "args": {"steps": steps, "batch": batch, "shapes": shapes, "seed": seed, "lr": lr, "cond_drop": cond_drop},
            },
            tmp,
        )
        os.replace(tmp, ckpt)

    models.eval()
    eval_before = evaluate()
    t_start = time.time()  # the time limit counts training steps only
    step = first - 1
    models.train()
    for step in range(first, steps + 1):
        parts = legacy_step(models, ema_models, opt, sched, occ_all, col_all, rng, gen, step, batch, cond_drop, ema)
        for k, v in parts.items():
            window[k] = [*window[k], v][-100:]
        if step % log_every == 0 or step == steps:
            means = {k: round(float(np.mean(v)), 5) for k, v in window.items()}
            seconds = round(trained_seconds + time.time() - t_start, 1)
            rec = {"step": step, "seconds": seconds, "lr": sched.get_last_lr()[0], **means}
            log.append(rec)
            if verbose:
                print(json.dumps(rec), flush=True)
        if step % ckpt_every == 0:
            save_ckpt(step)
        if time_limit is not None and time.time() - t_start > time_limit:
            break
    save_ckpt(step)
    models.eval()
    eval_after = evaluate()
    summary = {
        "seed": seed,
        "steps": step,
        "steps_this_command": step - first + 1,
        "total_steps": steps,
        "batch": batch,
        "shapes": shapes,
        "lr": lr,
        "cond_drop": cond_drop,
        "ema": ema,
        "config": models.cfg.__dict__,
        "init": None if init is None else Path(init).name,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "seconds": round(time.time() - t0, 1),
        "trained_seconds": round(trained_seconds + time.time() - t_start, 1),
        "final_losses": {k: round(float(np.mean(v)), 5) for k, v in window.items()},
        "eval_losses_before": eval_before,
        "eval_losses_after": eval_after,
        "log": log,
    }
    if out is not None:
        save_models(ema_models.cpu(), out, metadata={"seed": str(seed), "steps": str(step)})
        ema_models.to(dev)
    summary["models"] = ema_models
    return summary


class FastStep:
    """The fast training step: a batch from the :class:`~trellis_mv.proxy._fast.ViewBank`, packed texture
    stage, fused AdamW (on CUDA), foreach EMA, optionally compiled networks; no host sync.

    The texture stage runs once per bucket of shapes of similar size
    (:func:`~trellis_mv.proxy._fast.plan_buckets`, at most ``buckets``; by default 4 eager and 1
    compiled: on one H200 at batch 2048, 4 buckets ran 1.07x one padding eagerly, and compiling
    four graphs took more than 140 s against 94 s for one), each at its own
    padding. The losses are accumulated on the device (:attr:`acc`, ``[structure, texture]``
    sums over :attr:`count` steps) and read back only by :meth:`read_losses`.
    """

    def __init__(
        self, models: ProxyModels, ema_models: ProxyModels, bank: ViewBank, gen: torch.Generator, batch: int,
        lr: float, cond_drop: float = 0.1, ema: float = 0.999, compile: bool = False, buckets: int | None = None,
    ) -> None:
        self.models, self.ema_models, self.bank, self.gen = models, ema_models, bank, gen
        self.buckets = plan_buckets(bank.occ, batch, buckets or (1 if compile else 4))
        self.layout = layout(self.buckets)
        self.batch, self.cond_drop, self.ema = batch, cond_drop, ema
        self.dev = bank.occ.device
        self.use_amp = self.dev.type == "cuda"
        self.params: list[torch.Tensor] = list(models.parameters())
        self.ema_params: list[torch.Tensor] = list(ema_models.parameters())
        fused = self.dev.type == "cuda"
        self.opt = torch.optim.AdamW(
            self.params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99), fused=True if fused else None
        )
        packed = PackedTexture(models.texture)
        if compile:
            self.encoder = torch.compile(models.encoder)
            self.structure = torch.compile(models.structure)
            self.texture = torch.compile(packed, dynamic=False)  # one static graph per bucket (at most `buckets`)
        else:
            self.encoder, self.structure, self.texture = models.encoder, models.structure, packed
        self.acc = torch.zeros(2, device=self.dev)
        self.count = 0

    def __call__(self, step: int, lr: float) -> None:
        """Train step ``step`` (1-based, for the EMA warm-up) at learning rate ``lr``."""
        for g in self.opt.param_groups:
            g["lr"] = lr
        occ, col, images = self.bank.batch(self.gen, self.buckets)
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.use_amp):
            parts = fast_losses(
                self.models, self.texture, occ, col, images, self.gen, self.layout, self.cond_drop,
                encoder=self.encoder, structure=self.structure,
            )
        loss = parts["structure"] + parts["texture"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0, foreach=True)
        self.opt.step()
        with torch.no_grad():
            ema_update(self.ema_params, self.params, min(self.ema, (1 + step) / (10 + step)))
            self.acc += torch.stack([parts["structure"].detach().float(), parts["texture"].detach().float()])
        self.count += 1

    def read_losses(self) -> dict[str, float]:
        """Mean losses since the last call (one host sync), and reset the accumulator."""
        s, t = (self.acc / max(self.count, 1)).tolist()
        self.acc.zero_()
        self.count = 0
        return {"structure": s, "texture": t}

    # ---- the resumable state
    def tensors(self, exact: bool = False) -> dict[str, torch.Tensor]:
        """Weights and EMA (float16, or float32 with ``exact``) and AdamW moments (bfloat16, or float32).

        Compact, the default networks' state is 46 MB, small enough to travel with a checkout
        (17 MB) in 64 MiB, which float32 weights (57.6 MB) are not. A float16 weight is within
        2^-11 of its float32 value (relative), well under one step's update at the run's learning rates.
        """
        half = torch.float32 if exact else torch.float16  # the weights and the EMA
        mom_dtype = torch.float32 if exact else torch.bfloat16
        out: dict[str, torch.Tensor] = {}
        names = [n for n, _ in self.models.named_parameters()]
        for n, p, pe in zip(names, self.params, self.ema_params):
            out[f"model.{n}"] = p.detach().to(half)
            out[f"ema.{n}"] = pe.detach().to(half)
            st = self.opt.state.get(p, {})
            if "exp_avg" in st:
                out[f"exp_avg.{n}"] = st["exp_avg"].to(mom_dtype)
                out[f"exp_avg_sq.{n}"] = st["exp_avg_sq"].to(mom_dtype)
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor], opt_steps: int) -> None:
        """Restore what :meth:`tensors` wrote; ``opt_steps`` is the optimizer's step count."""
        names = [n for n, _ in self.models.named_parameters()]
        with torch.no_grad():
            for n, p, pe in zip(names, self.params, self.ema_params):
                p.copy_(tensors[f"model.{n}"])
                pe.copy_(tensors[f"ema.{n}"])
        sd = self.opt.state_dict()
        sd["state"] = {
            i: {
                "step": torch.tensor(float(opt_steps), dtype=torch.float32),
                "exp_avg": tensors[f"exp_avg.{n}"].float(),
                "exp_avg_sq": tensors[f"exp_avg_sq.{n}"].float(),
            }
            for i, n in enumerate(names)
            if f"exp_avg.{n}" in tensors
        }
        self.opt.load_state_dict(sd)


def _heldout(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    occ, col = make_shapes(range(HELDOUT, HELDOUT + n))
    return torch.from_numpy(occ), torch.from_numpy(col)


def _train_fast(
    steps: int, batch: int, shapes: int, seed: int, lr: float, cond_drop: float, ema: float,
    time_limit: float | None, out: str | Path | None, device: str, workers: int, log_every: int, verbose: bool,
    config: ProxyConfig | None, init: str | Path | None, state: str | Path | None, state_every: int,
    data_cache: str | Path | None, bank_views: int, bank_cache: str | Path | None, render_chunk: int | None,
    compile: bool, exact_state: bool, wall_limit: float | None, warmup: int | None, stop_at: int | None,
    voxel_blocks: int | None, buckets: int | None = None,
) -> dict:
    """The fast run (see :func:`train`)."""
    t0 = time.time()
    occ_all, col_all = dataset(shapes, workers, data_cache)  # worker processes: before CUDA starts
    t_data = time.time() - t0
    torch.manual_seed(seed)
    dev = torch.device(device)
    meta, saved = load_state(state, dev) if state is not None and state_exists(state) else (None, None)
    if meta is not None:
        models = ProxyModels(ProxyConfig.from_dict(meta["config"])).to(dev)
        init = meta.get("init")
        if voxel_blocks is not None and voxel_blocks != models.cfg.voxel_blocks:
            raise ValueError(f"{state} holds a run with voxel_blocks={models.cfg.voxel_blocks}, not {voxel_blocks}: "
                             "drop --voxel-blocks to continue it, or pass another --state")
    elif init is not None:  # continue from earlier weights (their config wins, but for added voxel blocks)
        from trellis_mv.proxy._models import extend_models, load_models

        models = load_models(init, dev).train()
        if voxel_blocks is not None and voxel_blocks != models.cfg.voxel_blocks:
            models = extend_models(models, dataclasses.replace(models.cfg, voxel_blocks=voxel_blocks))
    else:
        cfg = config or ProxyConfig()
        models = ProxyModels(cfg if voxel_blocks is None else dataclasses.replace(cfg, voxel_blocks=voxel_blocks)).to(dev)
    ema_models = copy.deepcopy(models).eval().requires_grad_(False)
    chunk = render_chunk or (1024 if dev.type == "cuda" else 64)
    bank = build_bank(occ_all, col_all, bank_views, seed, dev, random_views, chunk=chunk, cache=bank_cache, verbose=verbose)
    t_bank = time.time() - t0 - t_data
    gen = torch.Generator(device=dev).manual_seed(seed)
    fast = FastStep(models, ema_models, bank, gen, batch, lr, cond_drop, ema, compile, buckets)
    warmup = warmup or min(500, max(steps // 20, 1))
    log: list[dict] = []
    first, trained_seconds, commands = 1, 0.0, []
    if meta is not None and saved is not None:
        changed = {k: (meta["args"][k], v) for k, v in {"shapes": shapes, "seed": seed, "bank_views": bank_views}.items()
                   if meta["args"].get(k) != v}
        if changed:
            warnings.warn(f"continuing {state} on other data than it started with (was, now): {changed}", stacklevel=3)
        fast.load_tensors(saved, meta["step"])
        gen.set_state(decode_rng(meta["rng"]["gen"]))
        torch.set_rng_state(decode_rng(meta["rng"]["torch_cpu"]))
        log, first, trained_seconds, commands = meta["log"], meta["step"] + 1, meta["trained_seconds"], meta["commands"]
        fast.acc.copy_(torch.tensor(meta["acc"]))
        fast.count = meta["acc_count"]
        warmup = meta["schedule"]["warmup"]
    use_amp = dev.type == "cuda"

    eb = min(EVAL_BATCH, shapes)
    eval_images = model_images(occ_all[:eb].to(dev), col_all[:eb].to(dev), random_views(eb, np.random.default_rng(seed + 1)))
    h_occ, h_col = _heldout(eb)
    h_occ, h_col = h_occ.to(dev), h_col.to(dev)
    h_images = model_images(h_occ, h_col, random_views(eb, np.random.default_rng(seed + 3)))

    def evaluate(m: ProxyModels, occ: torch.Tensor, col: torch.Tensor, images: torch.Tensor) -> dict[str, float]:
        g = torch.Generator(device=dev).manual_seed(seed + 2)
        was = m.training
        m.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            r = {k: round(float(v), 5) for k, v in losses(m, occ, col, images, g, 0.0).items()}
        m.train(was)
        return r

    def evaluate_all() -> dict[str, dict[str, float]]:
        return {
            "train_batch": evaluate(models, occ_all[:eb].to(dev), col_all[:eb].to(dev), eval_images),
            "heldout": evaluate(models, h_occ, h_col, h_images),
            "heldout_ema": evaluate(ema_models, h_occ, h_col, h_images),
        }

    command = {"first_step": first, "batch": batch, "steps": steps, "lr": lr, "compile": compile}

    def save(step: int) -> None:
        if state is None:
            return
        acc = fast.acc.tolist()
        save_state(
            state, fast.tensors(exact_state),
            {
                "step": step, "config": asdict(models.cfg), "init": None if init is None else str(init),
                "schedule": {"steps": steps, "lr": lr, "warmup": warmup, "final_fraction": 0.05},
                "args": {"batch": batch, "shapes": shapes, "seed": seed, "cond_drop": cond_drop, "ema": ema,
                         "bank_views": bank_views},
                "rng": {"gen": encode_rng(gen.get_state()), "torch_cpu": encode_rng(torch.get_rng_state())},
                "trained_seconds": round(trained_seconds + time.time() - t_start, 3),
                "acc": acc, "acc_count": fast.count, "exact": exact_state, "log": log,
                "commands": [*commands, {**command, "last_step": step}],
            },
            max_total=None if exact_state else MAX_TOTAL,
        )

    eval_before = evaluate_all()
    models.train()
    t_start = time.time()  # the time limit counts training steps only
    t_window, step_window = t_start, 0
    step = first - 1
    for step in range(first, steps + 1):
        fast(step, cosine_lr(step, steps, lr, warmup))
        step_window += 1
        if step % log_every == 0 or step == steps:
            means = {k: round(v, 5) for k, v in fast.read_losses().items()}  # the only sync
            now = time.time()
            rec = {
                "step": step, "seconds": round(trained_seconds + now - t_start, 1),
                "lr": cosine_lr(step, steps, lr, warmup), **means,
                "examples_per_s": round(step_window * batch / max(now - t_window, 1e-9)),
            }
            t_window, step_window = now, 0
            log.append(rec)
            if verbose:
                print(json.dumps(rec), flush=True)
        if step % state_every == 0:
            save(step)
        if time_limit is not None and time.time() - t_start > time_limit:
            break
        if wall_limit is not None and time.time() - t0 > wall_limit:
            break
        if stop_at is not None and step >= stop_at:
            break
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds_this = time.time() - t_start
    if step % state_every != 0 or step < first:
        save(step)
    last = [r for r in log if r["step"] > first - 1]
    eval_after = evaluate_all()
    summary = {
        "seed": seed, "steps": step, "steps_this_command": step - first + 1, "total_steps": steps,
        "batch": batch, "shapes": shapes, "lr": lr, "warmup": warmup, "cond_drop": cond_drop, "ema": ema,
        "config": asdict(models.cfg), "init": None if init is None else Path(init).name,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "compile": compile, "bank": {"views_per_shape": bank_views, "images_bytes": bank_bytes(shapes, bank_views),
                                     "buckets": fast.layout, "setup_seconds": round(t_bank, 1)},
        "data_seconds": round(t_data, 1), "seconds": round(time.time() - t0, 1),
        "trained_seconds": round(trained_seconds + seconds_this, 1),
        "examples_per_s_this_command": round((step - first + 1) * batch / max(seconds_this, 1e-9)),
        "final_losses": {k: last[-1][k] for k in ("structure", "texture")} if last else {},
        "eval_losses_before": eval_before["train_batch"], "eval_losses_after": eval_after["train_batch"],
        "heldout_before": eval_before["heldout"], "heldout_after": eval_after["heldout"],
        "heldout_ema_after": eval_after["heldout_ema"], "log": log,
    }
    if out is not None:
        save_models(ema_models.cpu(), out, metadata={"seed": str(seed), "steps": str(step)})
        ema_models.to(dev)
    summary["models"] = ema_models
    return summary


def train(
    steps: int = 300,
    batch: int = 16,
    shapes: int = 400,
    seed: int = 0,
    lr: float = 5e-4,
    cond_drop: float = 0.1,
    ema: float = 0.999,
    time_limit: float | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
    workers: int = 1,
    log_every: int = 50,
    verbose: bool = True,
    config: ProxyConfig | None = None,
    init: str | Path | None = None,
    ckpt: str | Path | None = None,
    ckpt_every: int = 1000,
    data_cache: str | Path | None = None,
    legacy: bool = False,
    state: str | Path | None = None,
    state_every: int = 1000,
    bank_views: int = 8,
    bank_cache: str | Path | None = None,
    render_chunk: int | None = None,
    compile: bool = False,
    exact_state: bool = False,
    wall_limit: float | None = None,
    warmup: int | None = None,
    stop_at: int | None = None,
    voxel_blocks: int | None = None,
    buckets: int | None = None,
) -> dict:
    """Train (or continue); returns a summary (losses, steps, seconds, ``models``: the EMA) and writes ``out`` if given.

    The default is the fast step (:class:`FastStep`: views from a bank rendered once, no
    host syncs); ``legacy=True`` runs the step that trained the shipped weights (views
    rendered every step), whose checkpoint is ``ckpt`` (one ``torch.save`` file).

    ``eval_losses`` are measured on one fixed batch (fixed views, noise and times) before
    and after this command's training, with the trained (not the averaged) weights; the
    fast run also reports ``heldout_*`` on as many held-out shapes.

    :param steps: the total number of steps of the run (over all commands that continue it).
    :param time_limit: stop this command after this many seconds of training (the state is written).
    :param wall_limit: stop training once this many seconds have passed since the command
        started (data, bank and compilation included); fast step only.
    :param state: fast step: a folder (:mod:`trellis_mv.proxy._state`) continued from if it
        holds a state, written every ``state_every`` steps and at the end.
    :param bank_views: fast step: views rendered per training shape.
    :param bank_cache: fast step: a folder keeping the rendered bank between commands on one machine.
    :param exact_state: fast step: keep the EMA and the moments in float32 in the state
        (a resumed run then equals an uninterrupted one bit for bit on CPU; 1.6x larger).
    :param stop_at: fast step: end this command after this step (the state is written), as a time limit would.
    :param voxel_blocks: fast step: the texture flow's voxel blocks (``ProxyConfig.voxel_blocks``);
        with ``init``, blocks beyond the weights' own are added at identity (:func:`extend_models`).
    :param buckets: fast step: at most this many paddings of the texture stage (default: 4, or 1 with
        ``compile``; :class:`FastStep`).
    """
    if legacy:
        if voxel_blocks is not None:
            raise ValueError("voxel_blocks is a fast-step option: the legacy step trains the networks it was written for")
        return _train_legacy(
            steps=steps, batch=batch, shapes=shapes, seed=seed, lr=lr, cond_drop=cond_drop, ema=ema,
            time_limit=time_limit, out=out, device=device, workers=workers, log_every=log_every, verbose=verbose,
            config=config or ProxyConfig(voxel_blocks=0),  # the networks the legacy run trained
            init=init, ckpt=ckpt, ckpt_every=ckpt_every, data_cache=data_cache,
        )
    if ckpt is not None:
        raise ValueError("ckpt is the legacy step's checkpoint (legacy=True); the fast step continues from state=<folder>")
    return _train_fast(
        steps=steps, batch=batch, shapes=shapes, seed=seed, lr=lr, cond_drop=cond_drop, ema=ema,
        time_limit=time_limit, out=out, device=device, workers=workers, log_every=log_every, verbose=verbose,
        config=config, init=init, state=state, state_every=state_every, data_cache=data_cache, bank_views=bank_views,
        bank_cache=bank_cache, render_chunk=render_chunk, compile=compile, exact_state=exact_state,
        wall_limit=wall_limit, warmup=warmup, stop_at=stop_at, voxel_blocks=voxel_blocks, buckets=buckets,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trellis_mv.proxy.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--shapes", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--time-limit", type=float, help="stop after this many seconds of training (the weights are still written)")
    p.add_argument("--wall-limit", type=float, help="fast step: stop training this many seconds after the command started")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--warmup", type=int, help="warm-up steps (default min(500, steps / 20))")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--init", help="start from these weights instead of from scratch")
    p.add_argument("--voxel-blocks", type=int, help="fast step: texture voxel blocks (with --init: blocks added at identity)")
    p.add_argument("--legacy", action="store_true", help="the step of the shipped weights' run (views rendered every step)")
    p.add_argument("--ckpt", help="legacy step: checkpoint file to continue from (if it exists) and to write")
    p.add_argument("--ckpt-every", type=int, default=1000)
    p.add_argument("--state", help="fast step: resumable state folder, continued from if it holds one, and written")
    p.add_argument("--state-every", type=int, default=1000, help="fast step: write the state every this many steps")
    p.add_argument("--exact-state", action="store_true", help="keep the EMA and AdamW moments in float32 in the state")
    p.add_argument("--bank-views", type=int, default=8, help="fast step: views rendered per training shape")
    p.add_argument("--bank-cache", help="fast step: folder keeping the rendered view bank (read if it holds it)")
    p.add_argument("--render-chunk", type=int, help="views per renderer call when building the bank")
    p.add_argument("--compile", action="store_true", help="fast step: torch.compile the three networks")
    p.add_argument("--buckets", type=int, default=None,
                   help="fast step: at most this many paddings of the texture stage, shapes grouped by size "
                        "(default 4, or 1 with --compile; 1: one padding for all)")
    p.add_argument("--stop-at", type=int, help="fast step: end this command after this step (the state is written)")
    p.add_argument("--data-cache", help="an .npz file holding the generated shapes (written if missing)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--log", help="write the summary and loss log as JSON here")
    a = p.parse_args(argv)
    kw = dict(PRESETS[a.preset])
    for k in ("steps", "batch", "shapes", "lr", "time_limit"):
        if getattr(a, k) is not None:
            kw[k] = getattr(a, k)
    legacy = a.legacy or a.preset in LEGACY_PRESETS
    extra = {} if legacy else {
        "state": a.state, "state_every": a.state_every, "exact_state": a.exact_state, "bank_views": a.bank_views,
        "bank_cache": a.bank_cache, "render_chunk": a.render_chunk, "compile": a.compile, "wall_limit": a.wall_limit,
        "warmup": a.warmup, "stop_at": a.stop_at, "buckets": a.buckets,
    }
    if a.buckets is not None and a.buckets < 1:
        p.error(f"--buckets must be >= 1, got {a.buckets}")
    if a.voxel_blocks is not None:
        if legacy:
            p.error("--voxel-blocks is a fast-step option; drop --legacy (or the gpu preset)")
        if a.voxel_blocks < 0:
            p.error(f"--voxel-blocks must be >= 0, got {a.voxel_blocks}")
        extra["voxel_blocks"] = a.voxel_blocks
    summary = train(
        steps=int(kw["steps"]), batch=int(kw["batch"]), shapes=int(kw["shapes"]), lr=float(kw["lr"]),
        time_limit=float(kw["time_limit"]), seed=a.seed, cond_drop=a.cond_drop, device=a.device,
        workers=a.workers, out=a.out, init=a.init, ckpt=a.ckpt, ckpt_every=a.ckpt_every, data_cache=a.data_cache,
        log_every=a.log_every, legacy=legacy, **extra,
    )
    summary.pop("models")
    summary["command"] = "python -m trellis_mv.proxy.train " + " ".join(sys.argv[1:] if argv is None else argv)
    if a.log:
        Path(a.log).write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}, indent=1))
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
