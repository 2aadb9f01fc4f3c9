"""Train the proxy model: ``python -m trellis_mv.proxy.train --out weights.safetensors``.

Trained like TRELLIS.2's flow models: each example pairs a synthetic shape with ONE
rendered view (a random named view or a random azimuth and elevation), the image tokens
are dropped to zeros with probability ``--cond-drop`` (so ``zeros_like(cond)`` is the
unconditional branch), times are drawn from a logit-normal distribution and both stages
regress the flow velocity ``(1 - sigma_min) * eps - x_0``. The image encoder is trained
jointly with the two stages. Nothing here knows about multiple views: multi-view
conditioning is tuning-free, done at sampling time by the sampler patch.

``--preset cpu`` is a reduced run for a laptop; ``--preset gpu`` is the run that produced
the shipped weights (see ``weights/TRAINING.md``).

>>> summary = train(steps=2, batch=4, shapes=8, seed=0, log_every=1, device="cpu", verbose=False)
>>> sorted(summary["final_losses"])
['structure', 'texture']
"""

from __future__ import annotations

import argparse
import copy
import json
import math
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

__all__ = ["PRESETS", "main", "train"]

SIGMA_MIN = 1e-5
PRESETS: dict[str, dict[str, float | int]] = {
    "gpu": {"steps": 12000, "batch": 256, "shapes": 20000, "lr": 5e-4, "time_limit": 420},
    "cpu": {"steps": 300, "batch": 16, "shapes": 400, "lr": 5e-4, "time_limit": 900},
}


def random_views(n: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Training views: 40% named views, otherwise any azimuth at elevation in [-10, 50]."""
    named = list(NAMED_VIEWS.values())
    out = []
    for _ in range(n):
        if rng.random() < 0.4:
            out.append(named[int(rng.integers(len(named)))])
        else:
            out.append((float(rng.uniform(0, 360)), float(rng.uniform(-10, 50))))
    return out


def model_images(occ: torch.Tensor, col: torch.Tensor, views: Sequence, size: int = 64, chunk: int = 64) -> torch.Tensor:
    """Renders at twice ``size``, box-filtered to ``size``: what preprocessing a larger image gives."""
    out = []
    for i in range(0, occ.shape[0], chunk):
        out.append(input_views(occ[i : i + chunk], col[i : i + chunk], views[i : i + chunk], size=size, samples=128))
    return torch.cat(out)


def _gen(args: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    occ, col = make_shapes(range(*args))
    return occ, (col * 255).round().astype(np.uint8)


def dataset(shapes: int, workers: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Occupancy ``bool [S, 16, 16, 16]`` and colours ``float [S, 16, 16, 16, 3]`` of seeds ``0..S-1``."""
    step = max(1, math.ceil(shapes / max(workers, 1) / 4))
    ranges = [(a, min(a + step, shapes)) for a in range(0, shapes, step)]
    if workers > 1 and len(ranges) > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_gen, ranges))
    else:
        parts = [_gen(r) for r in ranges]
    occ = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    col = torch.from_numpy(np.concatenate([p[1] for p in parts])).float() / 255
    return occ, col


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
) -> dict:
    """Train from scratch; returns a summary (losses, steps, seconds) and writes ``out`` if given.

    ``eval_losses`` are measured on one fixed batch (fixed views, noise and times) before
    and after training with the trained (not the averaged) weights.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    t0 = time.time()
    occ_all, col_all = dataset(shapes, workers)
    occ_all, col_all = occ_all.to(dev), col_all.to(dev)
    if init is not None:  # continue from earlier weights (their config wins)
        from trellis_mv.proxy._models import load_models

        models = load_models(init, dev).train()
    else:
        models = ProxyModels(config).to(dev)
    ema_models = copy.deepcopy(models).eval().requires_grad_(False)
    opt = torch.optim.AdamW(models.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    warmup = min(200, max(steps // 10, 1))
    t_start = time.time()

    def progress(s: int) -> float:  # by steps or by the time limit, whichever comes first
        by_time = (time.time() - t_start) / time_limit if time_limit else 0.0
        return min(max(s / steps, by_time), 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress(s))))
    )
    use_amp = dev.type == "cuda"

    eb = min(batch, shapes)
    eval_views = random_views(eb, np.random.default_rng(seed + 1))
    eval_images = model_images(occ_all[:eb], col_all[:eb], eval_views)

    def evaluate() -> dict[str, float]:
        g = torch.Generator(device=dev).manual_seed(seed + 2)
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            return {k: float(v) for k, v in losses(models, occ_all[:eb], col_all[:eb], eval_images, g, 0.0).items()}

    eval_before = evaluate()
    t_start = time.time()  # the time limit counts training steps only
    gen = torch.Generator(device=dev).manual_seed(seed)
    log: list[dict] = []
    window: dict[str, list[float]] = {"structure": [], "texture": []}
    step = 0
    models.train()
    for step in range(1, steps + 1):
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
            rec = {"step": step, "seconds": round(time.time() - t0, 1), **means}
            log.append(rec)
            if verbose:
                print(json.dumps(rec), flush=True)
        if time_limit is not None and time.time() - t_start > time_limit:
            break
    models.eval()
    eval_after = evaluate()
    summary = {
        "seed": seed,
        "steps": step,
        "batch": batch,
        "shapes": shapes,
        "lr": lr,
        "cond_drop": cond_drop,
        "ema": ema,
        "init": None if init is None else Path(init).name,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "seconds": round(time.time() - t0, 1),
        "final_losses": {k: round(float(np.mean(v)), 5) for k, v in window.items()},
        "eval_losses_before": eval_before,
        "eval_losses_after": eval_after,
        "log": log,
    }
    if out is not None:
        save_models(ema_models.cpu(), out, metadata={"seed": str(seed), "steps": str(step)})
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
        workers=a.workers, out=a.out, init=a.init,
    )
    summary.pop("models")
    summary["command"] = "python -m trellis_mv.proxy.train " + " ".join(sys.argv[1:] if argv is None else argv)
    if a.log:
        Path(a.log).write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
