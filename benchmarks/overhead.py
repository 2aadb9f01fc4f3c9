"""Cost of the sampler patch: time per denoising step, patched vs unpatched, on a small CPU model.

Everything is measured side by side in one run (interleaved repeats, median), so the
ratios hold on whatever machine runs it:

    python benchmarks/overhead.py [--steps 12] [--repeats 5] [--tokens 256] [--width 128]

Two models: a small DiT-like block (self-attention over the latent tokens, cross-attention
on 64 conditioning tokens, MLP), where the model dominates; and a near-free model, which
shows the patch's own Python cost per step in microseconds. The last case samples two
objects with their own views (``per_sample=True``: 4 and 2 views) in one run, against the
two objects one after the other.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import trellis_mv
from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler


class SmallDiT(torch.nn.Module):
    def __init__(self, channels: int = 8, width: int = 128, cond_dim: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(channels, width)
        self.t = torch.nn.Linear(1, width)
        self.cond = torch.nn.Linear(cond_dim, width)
        self.blocks = torch.nn.ModuleList(
            torch.nn.TransformerDecoderLayer(width, 4, 2 * width, batch_first=True, dropout=0.0) for _ in range(depth)
        )
        self.out = torch.nn.Linear(width, channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, **kw: object) -> torch.Tensor:
        h = self.inp(x) + self.t(t[:, None, None] / 1000)
        c = self.cond(cond)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)


def free_model(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, **kw: object) -> torch.Tensor:
    return x * 0.5


def serial_loop(views: int) -> Callable:
    """TRELLIS v1's multidiffusion loop as community ports write it: one forward per view, then the negative."""

    def inference(self, model, x_t, t, cond, neg_cond, guidance_strength, guidance_interval, **kw):
        t_in = torch.full((x_t.shape[0],), 1000 * t)
        preds = [model(x_t, t_in, cond[i : i + 1], **kw) for i in range(views)]
        pred = sum(preds) / len(preds)
        if guidance_interval[0] <= t <= guidance_interval[1] and guidance_strength != 1:
            neg = model(x_t, t_in, neg_cond, **kw)
            return guidance_strength * pred + (1 - guidance_strength) * neg
        return pred

    return inference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dit = SmallDiT(width=args.width).eval()
    noise = torch.randn(1, args.tokens, 8)
    cond4 = torch.randn(4, 64, 64)
    neg = torch.zeros(1, 64, 64)
    params = dict(steps=args.steps, guidance_strength=3.0, guidance_interval=(0.0, 1.0), verbose=False)

    own_cond, own_weights = trellis_mv.pad_views([cond4, cond4[:2]])

    def per_sample(model, together: bool) -> Callable[[], None]:
        sampler = FlowEulerGuidanceIntervalSampler()

        def run() -> None:
            if together:
                with trellis_mv.patch_sampler(sampler, "multidiffusion", per_sample=True, weights=own_weights):
                    sampler.sample(model, noise.expand(2, -1, -1), own_cond, neg, **params)
                return
            for cond in (cond4, cond4[:2]):
                with trellis_mv.patch_sampler(sampler, "multidiffusion"):
                    sampler.sample(model, noise, cond, neg, **params)

        return run

    def case(model, views: int, aggregator: str | None, serial: bool = False) -> Callable[[], None]:
        sampler = FlowEulerGuidanceIntervalSampler()
        cond = cond4[:views]

        def run() -> None:
            if aggregator is None and not serial:
                sampler.sample(model, noise, cond, neg, **params)
            elif serial:
                sampler._inference_model = serial_loop(views).__get__(sampler)
                try:
                    sampler.sample(model, noise, cond, neg, **params)
                finally:
                    del sampler._inference_model
            else:
                with trellis_mv.patch_sampler(sampler, aggregator):
                    sampler.sample(model, noise, cond, neg, **params)

        return run

    for label, model in (("SmallDiT", dit), ("near-free model", free_model)):
        cases = {
            "unpatched, 1 view": case(model, 1, None),
            "single, 1 view": case(model, 1, "single"),
            "multidiffusion, 1 view": case(model, 1, "multidiffusion"),
            "stochastic, 4 views": case(model, 4, "stochastic"),
            "serial loop, 4 views": case(model, 4, None, serial=True),
            "multidiffusion, 4 views": case(model, 4, "multidiffusion"),
            "2 objects, one by one": per_sample(model, together=False),
            "2 objects, per_sample": per_sample(model, together=True),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        with torch.inference_mode():
            for fn in cases.values():
                fn()  # warm-up
            for _ in range(args.repeats):
                for name, fn in cases.items():  # interleaved: drift hits every case alike
                    start = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - start) / args.steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["unpatched, 1 view"]
        unit = "ms" if label == "SmallDiT" else "us"
        scale = 1e3 if unit == "ms" else 1e6
        print(f"\n{label}: {args.steps} steps, median of {args.repeats}, {torch.get_num_threads()} threads")
        print(f"{'case':<30}{'per step':>12}{'/ unpatched':>13}{'/ serial':>10}")
        for name, value in med.items():
            vs_serial = f"{value / med['serial loop, 4 views']:.3f}" if "4 views" in name else ""
            print(f"{name:<30}{value * scale:>9.2f} {unit}{value / base:>13.3f}{vs_serial:>10}")
        if unit == "us":
            over = med["single, 1 view"] - base
            print(f"patch overhead per step (single - unpatched): {over * 1e6:.1f} us")


if __name__ == "__main__":
    main()
