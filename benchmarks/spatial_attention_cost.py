"""Cost of the per-element aggregators on TRELLIS.2's real flow models (GPU), against multidiffusion.

Builds TRELLIS.2's sparse-structure and shape flow models from their configs with random
weights (as ``trellis2_step_cost.py`` does; cost does not depend on weight values) and times
one guided denoising step at N views through :func:`trellis_mv.patch_sampler` for
``multidiffusion``, ``attention`` (cross-attention entropy captured by hooks),
``visibility`` (cameras front/right/back/left...) and ``robust``, side by side in one
process: median ms per step and peak memory over the weights. It also checks that
``attention`` found every cross-attention module and recorded per-element weights.

    TRELLIS2_SRC=/path/to/TRELLIS.2 python benchmarks/spatial_attention_cost.py --views 4 --out results/
    TRELLIS2_SRC=/path/to/TRELLIS.2 python benchmarks/spatial_attention_cost.py --tiny --voxels 500   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import trellis2_step_cost as base
from trellis_mv_spatial import Attention, Robust, Visibility, find_cross_attention

import trellis_mv

_bootstrap = base._bootstrap  # support/upstream.py, put on the path by trellis2_step_cost

CAMERAS = ["front", "right", "back", "left", "top", "45,25", "135,25", "225,25"]
# classes, so that this runs from a source tree where the plugin's entry points are not installed
AGGREGATORS = {"multidiffusion": "multidiffusion", "attention": Attention, "visibility": Visibility, "robust": Robust}


def measure(stage: str, model: torch.nn.Module, x_t: Any, cond: torch.Tensor, neg: torch.Tensor, repeats: int) -> list[dict]:
    from trellis2.pipelines.samplers import FlowEulerGuidanceIntervalSampler

    sampler = FlowEulerGuidanceIntervalSampler(sigma_min=1e-5)
    guided = dict(guidance_strength=7.5, guidance_interval=(0.0, 1.0), guidance_rescale=0.5)
    rows = []
    n = cond.shape[0]
    with torch.no_grad():
        for name, agg in AGGREGATORS.items():
            with trellis_mv.patch_sampler(sampler, agg, stage=stage, cameras=CAMERAS[:n]) as patch:
                ms, mem = base.timed(lambda: sampler._inference_model(model, x_t, 0.8, cond, neg_cond=neg, **guided), repeats)
            weights = patch.diagnostics.get("view_weights")
            row = {"stage": stage, "aggregator": name, "n": n, "ms": ms, "peak_gib": mem,
                   "forwards": patch.model_calls / (repeats + 1),
                   "view_weights": list(weights.shape) if weights is not None else None}
            if name == "attention":
                row["cross_attention_modules"] = len(find_cross_attention(model))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default=None)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--voxels", type=int, default=15000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    if a.tiny:
        base.TINY.update(model_channels=64, num_blocks=2, num_heads=2)
    _bootstrap.load_trellis2(a.src, flash_attn_shim=True)
    src = _bootstrap.locate_source("trellis2", "TRELLIS2_SRC", a.src).parent
    from trellis2.modules.sparse import SparseTensor

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(a.views, 1029, 1024, generator=gen).to(device)
    neg = torch.zeros_like(cond[:1])
    rows = []
    ss = base.build("ss_flow_img_dit_1_3B_64_bf16", src, device, 1)
    x = torch.randn(1, ss.in_channels, ss.resolution, ss.resolution, ss.resolution, generator=gen).to(device)
    rows += measure("sparse_structure", ss, x, cond, neg, a.repeats)
    del ss
    shape = base.build("slat_flow_img2shape_dit_1_3B_512_bf16", src, device, 2)
    idx = torch.randperm(32**3, generator=gen)[: a.voxels].sort().values
    coords = torch.stack([torch.zeros_like(idx), idx // 1024, (idx // 32) % 32, idx % 32], 1).int().to(device)
    x = SparseTensor(feats=torch.randn(a.voxels, shape.in_channels, generator=gen).to(device), coords=coords)
    rows += measure("shape", shape, x, cond, neg, a.repeats)
    meta = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "views": a.views, "voxels": a.voxels, "repeats": a.repeats, "tiny": a.tiny}
    lines = [f"device: {meta['device']}, torch {meta['torch']}, N = {a.views}, {a.voxels} shape voxels, bf16, random weights",
             "", "| stage | aggregator | ms / step | x multidiffusion | peak GiB over weights | forwards |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        md = next(q["ms"] for q in rows if q["stage"] == r["stage"] and q["aggregator"] == "multidiffusion")
        lines.append(f"| {r['stage']} | {r['aggregator']} | {r['ms']:.1f} | {r['ms'] / md:.2f} | {r['peak_gib']:.2f} | "
                     f"{r['forwards']:.0f} |")
    print("\n".join(lines))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "spatial_attention_cost.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        (Path(a.out) / "spatial_attention_cost.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
