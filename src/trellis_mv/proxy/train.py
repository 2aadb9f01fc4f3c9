"""Train the proxy model: ``python -m trellis_mv.proxy.train --out weights.safetensors``.

Trained like TRELLIS.2's flow models: each example pairs a synthetic shape with ONE
rendered view, the image tokens are dropped to zeros with probability ``--cond-drop``
(so ``zeros_like(cond)`` is the unconditional branch), times are drawn from a
logit-normal distribution and both stages regress the flow velocity
``(1 - sigma_min) * eps - x_0``. The image encoder is trained jointly with the two
stages. Nothing here knows about multiple views: multi-view conditioning is tuning-free,
done at sampling time by the sampler patch. The views are mostly those users take
(:func:`random_views`).

A run can be split over several commands: ``--ckpt`` names a checkpoint (weights, EMA,
optimizer, schedule, step, random states and the loss log) written every
``--ckpt-every`` steps and when ``--time-limit`` ends the command; the next command with
the same ``--ckpt`` continues where it stopped, towards the same ``--steps`` (the cosine
schedule runs over ``--steps``). ``--data-cache`` keeps the generated shapes on disk.

``--preset cpu`` is a reduced run for a laptop; ``--preset gpu`` is the run that produced
the shipped weights (see ``weights/TRAINING.md``).

>>> summary = train(steps=2, batch=4, shapes=8, seed=0, log_every=1, device="cpu", verbose=False)
>>> sorted(summary["final_losses"]), summary["steps"]
(['structure', 'texture'], 2)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trellis_mv.proxy._data import make_shapes
from trellis_mv.proxy._models import ProxyConfig, ProxyModels, encode_structure, save_models
from trellis_mv.proxy._render import NAMED_VIEWS, input_views
from trellis_mv.sparse import SparseTensor

__all__ = ["PRESETS", "main", "random_views", "train"]

SIGMA_MIN = 1e-5
PRESETS: dict[str, dict[str, float | int]] = {
    "gpu": {"steps": 5200, "batch": 256, "shapes": 40000, "lr": 6e-4, "time_limit": 470},
    "cpu": {"steps": 300, "batch": 16, "shapes": 400, "lr": 5e-4, "time_limit": 900},
}


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
        models = ProxyModels(ProxyConfig(**state["config"])).to(dev)
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
        idx = torch.from_numpy(rng.integers(0, shapes, size=batch)).to(dev)
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
        for k, v in parts.items():
            window[k] = [*window[k], v.item()][-100:]
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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trellis_mv.proxy.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--shapes", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--time-limit", type=float, help="stop after this many seconds (the weights are still written)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--init", help="start from these weights instead of from scratch")
    p.add_argument("--ckpt", help="checkpoint to continue from (if it exists) and to write")
    p.add_argument("--ckpt-every", type=int, default=1000)
    p.add_argument("--data-cache", help="an .npz file holding the generated shapes (written if missing)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--log", help="write the summary and loss log as JSON here")
    a = p.parse_args(argv)
    kw = dict(PRESETS[a.preset])
    for k in ("steps", "batch", "shapes", "lr", "time_limit"):
        if getattr(a, k) is not None:
            kw[k] = getattr(a, k)
    summary = train(
        steps=int(kw["steps"]), batch=int(kw["batch"]), shapes=int(kw["shapes"]), lr=float(kw["lr"]),
        time_limit=float(kw["time_limit"]), seed=a.seed, cond_drop=a.cond_drop, device=a.device,
        workers=a.workers, out=a.out, init=a.init, ckpt=a.ckpt, ckpt_every=a.ckpt_every, data_cache=a.data_cache,
        log_every=a.log_every,
    )
    summary.pop("models")
    summary["command"] = "python -m trellis_mv.proxy.train " + " ".join(sys.argv[1:] if argv is None else argv)
    if a.log:
        Path(a.log).write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
