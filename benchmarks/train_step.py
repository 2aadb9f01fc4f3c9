"""Proxy training throughput: the legacy step against the fast step, in one run, on one device.

    python benchmarks/train_step.py [--device cuda] [--shapes 4096] [--batch 256 1024 2048] [--buckets 1 4] [--compile]

The legacy step (``trellis_mv.proxy.train.legacy_step``, what trained the shipped weights)
renders its batch's views every step, runs the sparse texture stage, plain AdamW, one EMA
kernel per parameter and reads its losses back every step. The fast step
(``trellis_mv.proxy.train.FastStep``) draws its views from a bank rendered once (its
rendering time is reported apart, as ``bank``), runs the packed texture stage (its shapes in at most ``--buckets`` paddings:
``plan_buckets``; 1 pads every item to the largest shape), fused AdamW
(on CUDA) and a foreach EMA, and syncs only at the end of the timed steps. Both start from
the same initial weights; examples/s is measured over ``--steps`` steps after
``--warmup`` untimed ones (compilation happens there). Each row prints as one JSON line;
the last line holds the ratios to the legacy step. ``--config tiny`` runs small networks
(a CPU smoke test).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import numpy as np
import torch

from trellis_mv.proxy._fast import build_bank
from trellis_mv.proxy._models import ProxyConfig, ProxyModels
from trellis_mv.proxy.train import FastStep, dataset, legacy_step, random_views

TINY = ProxyConfig(width=16, heads=2, encoder_layers=1, structure_blocks=1, texture_blocks=1, patch=8)


def _sig(x: float) -> float:
    """``x`` to 4 significant digits (small CPU rates keep their ratio)."""
    return float(f"{x:.4g}")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == "cuda" else None


def bench_legacy(models: ProxyModels, occ: torch.Tensor, col: torch.Tensor, batch: int, steps: int, warmup: int) -> dict:
    """Examples/s of :func:`legacy_step` at ``batch``."""
    dev = occ.device
    models = copy.deepcopy(models).train()
    ema_models = copy.deepcopy(models).eval().requires_grad_(False)
    opt = torch.optim.AdamW(models.parameters(), lr=1e-4, weight_decay=0.01, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    rng, gen = np.random.default_rng(0), torch.Generator(device=dev).manual_seed(0)
    last: dict[str, float] = {}
    for s in range(1, warmup + steps + 1):
        if s == warmup + 1:
            _sync(dev)
            t0 = time.perf_counter()
        last = legacy_step(models, ema_models, opt, sched, occ, col, rng, gen, s, batch, 0.1, 0.999)
    _sync(dev)
    sec = time.perf_counter() - t0
    return {"step": "legacy", "batch": batch, "examples_per_s": _sig(steps * batch / sec),
            "ms_per_step": round(1000 * sec / steps, 2), "losses": last}


def bench_fast(models: ProxyModels, bank, batch: int, steps: int, warmup: int, compile: bool, buckets: int) -> dict:
    """Examples/s of :class:`FastStep` at ``batch``, its shapes in at most ``buckets`` paddings."""
    dev = bank.occ.device
    models = copy.deepcopy(models).train()
    ema_models = copy.deepcopy(models).eval().requires_grad_(False)
    fast = FastStep(models, ema_models, bank, torch.Generator(device=dev).manual_seed(0), batch, 1e-4, compile=compile,
                    buckets=buckets)
    t_warm = time.perf_counter()
    for s in range(1, warmup + steps + 1):
        if s == warmup + 1:
            _sync(dev)
            t0 = time.perf_counter()
            warm = t0 - t_warm
        fast(s, 1e-4)
    _sync(dev)
    sec = time.perf_counter() - t0
    losses = fast.read_losses()
    return {"step": "fast" + ("+compile" if compile else ""), "batch": batch, "buckets": fast.layout,
            "examples_per_s": _sig(steps * batch / sec), "ms_per_step": round(1000 * sec / steps, 2),
            "warmup_seconds": round(warm, 1), "losses": losses, "finite": all(map(math.isfinite, losses.values()))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--config", choices=["default", "tiny"], default="default")
    p.add_argument("--shapes", type=int, default=4096)
    p.add_argument("--bank-views", type=int, default=2)
    p.add_argument("--legacy-batch", type=int, default=256, help="the shipped run's batch")
    p.add_argument("--batch", type=int, nargs="+", default=[256, 1024, 2048])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also time the fast step with torch.compile")
    p.add_argument("--buckets", type=int, nargs="+", default=[4],
                   help="paddings of the texture stage to time the fast step with (1: every item padded to the largest shape)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--render-chunk", type=int, help="views per renderer call for the bank (default 1024 on CUDA, 64 on CPU)")
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    models = ProxyModels(TINY if a.config == "tiny" else ProxyConfig()).to(dev)
    rows: list[dict] = []

    def emit(row: dict) -> None:  # the file is rewritten after every row: a run cut short keeps what it measured
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "w") as f:
                json.dump(rows, f, indent=1)

    t0 = time.perf_counter()
    occ, col = dataset(a.shapes, a.workers)
    emit({"data": a.shapes, "seconds": round(time.perf_counter() - t0, 1)})
    t0 = time.perf_counter()
    chunk = a.render_chunk or (1024 if dev.type == "cuda" else 64)
    bank = build_bank(occ, col, a.bank_views, 0, dev, random_views, chunk=chunk)
    _sync(dev)
    sec = time.perf_counter() - t0
    emit({"bank": a.shapes * a.bank_views, "seconds": round(sec, 1), "views_per_s": round(a.shapes * a.bank_views / sec, 1),
          "render_chunk": chunk, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"})
    occ_d, col_d = occ.to(dev), col.to(dev)
    legacy = bench_legacy(models, occ_d, col_d, a.legacy_batch, a.steps, a.warmup)
    emit({**legacy, "peak_gib": _peak(dev)})
    for compile, b, k in [(c, b, k) for c in ([False, True] if a.compile else [False]) for b in a.batch for k in a.buckets]:
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        try:
            row = bench_fast(models, bank, b, a.steps, a.warmup, compile, k)
        except torch.OutOfMemoryError:
            emit({"step": "fast" + ("+compile" if compile else ""), "batch": b, "max_buckets": k, "error": "out of memory"})
            continue
        except Exception as exc:  # a compiler failure is a result too; the eager rows stand
            if not compile:
                raise
            emit({"step": "fast+compile", "batch": b, "max_buckets": k, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            break
        emit({**row, "max_buckets": k, "peak_gib": _peak(dev)})
    base = legacy["examples_per_s"]
    emit({"ratio_to_legacy": {f"{r['step']}@{r['batch']}/{r['max_buckets']}": round(r["examples_per_s"] / base, 2)
                              for r in rows if r.get("step", "").startswith("fast") and "examples_per_s" in r}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
