"""Cost of one multi-view denoising step on TRELLIS.2's real flow models (GPU).

Builds TRELLIS.2's sparse-structure and shape flow models from their configs
(``ss_flow_img_dit_1_3B_64_bf16``, ``slat_flow_img2shape_dit_1_3B_512_bf16``, 1.29B
parameters each, bf16) with random weights (cost does not depend on weight values) and
measures, in one process:

* ms per denoising step (median) and peak memory over the weights, for every registered
  aggregator at N = 1, 2, 4, 8 views, through :func:`trellis_mv.patch_sampler` on
  TRELLIS.2's own ``FlowEulerGuidanceIntervalSampler``;
* the single-view step (the unpatched sampler) and TRELLIS v1's serial loop (N
  conditional forwards of batch 1, then one negative), on the same models;
* multidiffusion at guidance strength 1 (no negative pass) and with a ``max_batch``
  memory cap at N = 8.

``--check`` also runs whole multi-view generations through
:func:`trellis_mv.run_multi_image` with a ``Trellis2Adapter`` over a ``Trellis2ImageTo3DPipeline``
built from full-size random models (pipeline types ``512`` and ``1024_cascade``, N = 1, 2,
4, each aggregator, ``num_samples`` 1 and 2), and compares N = 1 with the unpatched run.

Needs TRELLIS.2's source (``TRELLIS2_SRC``: a folder holding ``trellis2/`` and
``configs/``); flash_attn is replaced by PyTorch's varlen attention when missing.

    TRELLIS2_SRC=/path/to/TRELLIS.2 python benchmarks/trellis2_step_cost.py --check --out results/
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

import upstream as _bootstrap

import trellis_mv

GIB = 1024**3
#: the cameras of the views (spread around the object), for aggregators that use them
CAMERAS = ["front", "right", "back", "left", "45", "135", "225", "315"]


TINY: dict[str, Any] = {}


def build(config: str, src: Path, device: str, seed: int) -> torch.nn.Module:
    """A TRELLIS.2 model from its training config, bf16, random weights (``TINY`` overrides for a CPU smoke test)."""
    return _bootstrap.build_trellis2_model(config, src, device, seed, TINY)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Any, repeats: int) -> tuple[float, float]:
    """(median ms, peak GiB over what was allocated before) of ``fn()`` after one warm-up."""
    fn()
    sync()
    base = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = (torch.cuda.max_memory_allocated() - base) / GIB if torch.cuda.is_available() else 0.0
    return statistics.median(times), peak


def step_cost(stage: str, model: torch.nn.Module, x_t: Any, cond_all: torch.Tensor, neg: torch.Tensor,
              counts: list[int], repeats: int, rows: list[dict[str, Any]]) -> None:
    """Time one denoising step (t = 0.8, inside the guidance interval) in every configuration."""
    from trellis2.pipelines.samplers import FlowEulerGuidanceIntervalSampler, FlowEulerSampler

    sampler = FlowEulerGuidanceIntervalSampler(sigma_min=1e-5)
    t = 0.8
    guided = dict(guidance_strength=7.5, guidance_interval=(0.0, 1.0), guidance_rescale=0.5)

    def record(**row: Any) -> None:
        row["stage"] = stage
        rows.append(row)
        print(json.dumps(row), flush=True)

    with torch.no_grad():
        ms, mem = timed(lambda: sampler._inference_model(model, x_t, t, cond_all[:1], neg_cond=neg, **guided), repeats)
        record(config="single-view (unpatched)", n=1, ms=ms, peak_gib=mem, forwards=2, rows=2)
        for n in counts:
            cond = cond_all[:n]

            def serial(cond: torch.Tensor = cond, n: int = n) -> Any:  # TRELLIS v1's multidiffusion loop
                preds = [FlowEulerSampler._inference_model(sampler, model, x_t, t, cond[i:i + 1]) for i in range(n)]
                pos = sum(preds[1:], preds[0]) / n
                negp = FlowEulerSampler._inference_model(sampler, model, x_t, t, neg)
                return 7.5 * pos + (1 - 7.5) * negp

            ms, mem = timed(serial, repeats)
            record(config="serial loop (TRELLIS v1 style)", n=n, ms=ms, peak_gib=mem, forwards=n + 1, rows=n + 1)
            for info in trellis_mv.list_aggregators():
                with trellis_mv.patch_sampler(sampler, info.name, stage=stage, cameras=CAMERAS[:n]) as patch:
                    ms, mem = timed(lambda cond=cond: sampler._inference_model(model, x_t, t, cond, neg_cond=neg,
                                                                               **guided), repeats)
                calls = patch.model_calls / (repeats + 1)
                rows_ = patch.batch_rows / (repeats + 1)
                record(config=info.name, n=n, ms=ms, peak_gib=mem, forwards=calls, rows=rows_)
            with trellis_mv.patch_sampler(sampler, "multidiffusion", stage=stage) as patch:
                ms, mem = timed(lambda cond=cond: sampler._inference_model(
                    model, x_t, t, cond, neg_cond=neg, guidance_strength=1.0, guidance_interval=(0.0, 1.0)), repeats)
            record(config="multidiffusion, guidance strength 1", n=n, ms=ms, peak_gib=mem,
                   forwards=patch.model_calls / (repeats + 1), rows=patch.batch_rows / (repeats + 1))
            if n == max(counts):
                for cap in (3, 5):
                    with trellis_mv.patch_sampler(sampler, "multidiffusion", stage=stage, max_batch=cap) as patch:
                        ms, mem = timed(lambda cond=cond: sampler._inference_model(model, x_t, t, cond, neg_cond=neg,
                                                                                   **guided), repeats)
                    record(config=f"multidiffusion, max_batch={cap}", n=n, ms=ms, peak_gib=mem,
                           forwards=patch.model_calls / (repeats + 1), rows=patch.batch_rows / (repeats + 1))


def benchmark(src: Path, device: str, repeats: int, counts: list[int], voxels: int) -> list[dict[str, Any]]:
    from trellis2.modules.sparse import SparseTensor

    rows: list[dict[str, Any]] = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    cond_all = torch.randn(max(counts), 1029, 1024, generator=gen).to(device)
    neg = torch.zeros_like(cond_all[:1])

    ss = build("ss_flow_img_dit_1_3B_64_bf16", src, device, 1)
    x = torch.randn(1, ss.in_channels, ss.resolution, ss.resolution, ss.resolution, generator=gen).to(device)
    step_cost("sparse_structure", ss, x, cond_all, neg, counts, repeats, rows)
    del ss
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    shape = build("slat_flow_img2shape_dit_1_3B_512_bf16", src, device, 2)
    idx = torch.randperm(32**3, generator=gen)[:voxels].sort().values
    coords = torch.stack([torch.zeros_like(idx), idx // 1024, (idx // 32) % 32, idx % 32], 1).int().to(device)
    x = SparseTensor(feats=torch.randn(voxels, shape.in_channels, generator=gen).to(device), coords=coords)
    step_cost("shape", shape, x, cond_all, neg, counts, repeats, rows)
    del shape
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


# -- whole multi-view runs -------------------------------------------------------------------


def check(src: Path, device: str, keep: float) -> list[dict[str, Any]]:
    from trellis_mv.integrations.trellis2 import Trellis2Adapter

    pipe = _bootstrap.random_trellis2_pipeline(src, device, keep=keep, overrides=TINY)
    gen = torch.Generator(device="cpu").manual_seed(0)
    conds = {512: torch.randn(4, 1029, 1024, generator=gen).to(device),
             1024: torch.randn(4, 4101, 1024, generator=gen).to(device)}
    rows: list[dict[str, Any]] = []

    def encoded(n: int, resolutions: tuple[int, ...] = (512, 1024)) -> list[dict[int, torch.Tensor]]:
        return [{r: conds[r][i] for r in resolutions} for i in range(n)]

    def one(agg: str, n: int, samples: int, ptype: str) -> Any:
        sync()
        res = trellis_mv.run_multi_image(Trellis2Adapter(pipe, pipeline_type=ptype), encoded(n), mode=agg,
                                         num_samples=samples, seed=7, cameras=CAMERAS[:n])
        _, (shape, tex, resolution) = res.output
        row = {"pipeline_type": ptype, "aggregator": agg, "n": n, "num_samples": samples,
               "voxels": int(shape.feats.shape[0]), "batch": int(shape.shape[0]), "resolution": resolution,
               "finite": bool(torch.isfinite(shape.feats).all() and torch.isfinite(tex.feats).all()),
               "seconds": round(res.seconds, 2), **{f"{k}_rows": v["latent_rows"] for k, v in
                                                      res.cost()["stages"].items()},
               "shape_runs": res.patches["shape"].runs}
        rows.append(row)
        print(json.dumps(row), flush=True)
        return res

    for agg in [info.name for info in trellis_mv.list_aggregators()]:
        for n in (1, 2, 4):
            for samples in (1, 2):
                one(agg, n, samples, "512")
    for agg in ("multidiffusion", "stochastic"):
        one(agg, 2, 2, "1024_cascade")

    # N = 1 against the unpatched pipeline (bf16: agreement to tolerance)
    single = {"cond": conds[512][:1], "neg_cond": torch.zeros_like(conds[512][:1])}
    with Trellis2Adapter(pipe, pipeline_type="512").views_cond(lambda image, resolution, include_neg_cond=True: single):
        _, (ref_shape, ref_tex, _) = pipe.run(None, seed=7, preprocess_image=False, return_latent=True,
                                              pipeline_type="512")
    for agg in [info.name for info in trellis_mv.list_aggregators()]:
        res = trellis_mv.run_multi_image(Trellis2Adapter(pipe, pipeline_type="512"), encoded(1, (512,)), mode=agg,
                                         seed=7, cameras=["front"])
        _, (shape, tex, _) = res.output
        same_coords = torch.equal(shape.coords, ref_shape.coords)
        row = {"compare": "N=1 vs unpatched run (pipeline_type 512)", "aggregator": agg, "same_coords": same_coords,
               "shape_max_abs_diff": float((shape.feats - ref_shape.feats).abs().max()) if same_coords else None,
               "tex_max_abs_diff": float((tex.feats - ref_tex.feats).abs().max()) if same_coords else None,
               "shape_scale": float(ref_shape.feats.abs().max())}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def report(result: dict[str, Any]) -> str:
    """The step-cost rows as markdown tables, with the ratios the targets are stated in."""
    meta = result["meta"]
    lines = [f"Device: {meta['device']}, torch {meta['torch']}, median of {meta['repeats']} "
             f"(shape latent: {meta['shape_voxels']} voxels; {meta['cond_tokens']})."]
    rows = result.get("step_cost", [])
    for stage in dict.fromkeys(r["stage"] for r in rows):
        mine = [r for r in rows if r["stage"] == stage]
        single = next(r["ms"] for r in mine if r["config"].startswith("single-view"))
        serial = {r["n"]: r["ms"] for r in mine if r["config"].startswith("serial loop")}
        lines += ["", f"### {stage}", "", f"Single-view step (unpatched sampler): {single:.1f} ms.", "",
                  "| config | N | ms/step | x single-view | serial / this | peak GiB | forwards | rows |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in mine:
            if r["config"].startswith("single-view"):
                continue
            vs = f"{serial[r['n']] / r['ms']:.3f}" if r["n"] in serial else ""
            lines.append(f"| {r['config']} | {r['n']} | {r['ms']:.1f} | {r['ms'] / single:.2f} | {vs} | "
                         f"{r['peak_gib']:.2f} | {r['forwards']:g} | {r['rows']:g} |")
        for n, ms in serial.items():
            md = next((r["ms"] for r in mine if r["config"] == "multidiffusion" and r["n"] == n), None)
            if md is not None and n > 1:
                lines.append(f"\nN={n}: multidiffusion {md:.1f} ms vs serial {ms:.1f} ms: {ms / md:.3f}x the "
                             f"throughput ({100 * (1 - md / ms):.1f}% less time); bound (N+1)/2 single-view = "
                             f"{(n + 1) / 2 * single:.1f} ms {'met' if md <= (n + 1) / 2 * single else 'MISSED'}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", default=os.environ.get("TRELLIS2_SRC"), help="TRELLIS.2 source tree")
    parser.add_argument("--out", default=None, help="folder for the JSON result")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--voxels", type=int, default=15000, help="active voxels of the shape latent")
    parser.add_argument("--check", action="store_true", help="also run whole multi-view generations")
    parser.add_argument("--check-only", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="2-block, 64-channel models: a CPU smoke test")
    parser.add_argument("--keep", type=float, default=0.1, help="occupied fraction of the 32^3 grid in --check")
    parser.add_argument("--report", metavar="JSON", help="print the tables of an earlier run's JSON and exit")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    if args.tiny:
        TINY.update(model_channels=64, num_blocks=2, num_heads=2)
    _bootstrap.load_trellis2(args.src, flash_attn_shim=True)
    src = _bootstrap.locate_source("trellis2", "TRELLIS2_SRC", args.src).parent
    device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "attention": "dense: SDPA; sparse: torch.nn.attention.varlen.varlen_attn (flash_attn stand-in)",
        "cond_tokens": "[N, 1029, 1024] per view (512 px), zeros negative",
        "shape_voxels": args.voxels,
        "repeats": args.repeats,
    }
    print(json.dumps(meta), flush=True)
    result: dict[str, Any] = {"meta": meta}
    if args.check or args.check_only:
        result["check"] = check(src, device, args.keep)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if not args.check_only:
        result["step_cost"] = benchmark(src, device, args.repeats, args.views, args.voxels)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "trellis2_step_cost.json").write_text(json.dumps(result, indent=1))
    if "step_cost" in result:
        print(report(result))


if __name__ == "__main__":
    main()
