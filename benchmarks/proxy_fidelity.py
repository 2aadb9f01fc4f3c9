"""Does the proxy model use its views? One view against four, paired on the same shapes and noise.

For each held-out shape (seeds ``HELD_OUT_SEED + i``) the shape is generated from the
front view alone and from the four standard views through multidiffusion, with the same
noise seed ``i``, and both results are scored by :func:`trellis_mv.eval.score_voxels` on the same
surface. Every comparison is a per-shape paired difference (4 views minus 1): its mean,
a 95% bootstrap interval over shapes and a Wilcoxon signed-rank p-value. IoU is shown
beside its reference points (:func:`trellis_mv.eval.reference_iou`): a random other
shape, and a perfect model given 1 or 4 views.

    python benchmarks/proxy_fidelity.py --shapes 200 --device cuda --workers 12 --out benchmarks/results/proxy_fidelity_H100.md
    python benchmarks/proxy_fidelity.py --shapes 4 --workers 1 --reference-samples 2 --out /tmp/fidelity.md

The per-shape scores are written next to the table (``.json``); ``--from-json`` rebuilds the
table from them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

#: (key, label, direction: +1 higher is better, target on the 4-vs-1 difference or on one side)
METRICS = [
    ("iou", "IoU", 1),
    ("chamfer", "Chamfer (voxels)", -1),
    ("fscore", "F-score @ 1 voxel", 1),
    ("given_silhouette_iou", "given-view silhouette IoU", 1),
    ("first_silhouette_iou", "front-view silhouette IoU", 1),
    ("given_color_acc", "given-view colour accuracy", 1),
    ("hidden_color_acc_seen", "colour acc., surface front hides, 4 views show", 1),
    ("hidden_color_acc_unseen", "colour acc., surface no view shows", 1),
    ("heldout_color_error", "colour error, held-out views", -1),
]


_STATE: dict = {}


def _init(device: str, ref_samples: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from trellis_mv.proxy import ProxyPipeline

    _STATE.update(pipe=ProxyPipeline(device=device), ref_samples=ref_samples)


def _work(i: int) -> dict:
    """Scores of held-out shape ``i`` from 1 and from 4 views (same noise seed ``i``)."""
    import torch

    from trellis_mv import run_multi_image
    from trellis_mv.eval import reference_iou
    from trellis_mv.eval import score_voxels as score
    from trellis_mv.proxy import HELD_OUT_SEED, VIEW_SETS, input_views, make_shape, visible_faces

    shape = make_shape(HELD_OUT_SEED + i)
    row: dict = {"shape": i, "seed": i}
    # how much of the surface the front hides (and the 4 views show) sits on voxels the front shows: colour is
    # per voxel, so a 1-view result gets these faces right for free; the gain cannot exceed the rest
    occ = torch.from_numpy(shape.occupancy)
    first = visible_faces(occ, VIEW_SETS[1])[0]
    hidden = visible_faces(occ, VIEW_SETS[4]).any(0) & ~first
    row["hidden_seen_on_front_voxels"] = (hidden & first.any(0)[None]).sum().item() / max(hidden.sum().item(), 1)
    for n in (1, 4):
        views = VIEW_SETS[n]
        images = list(input_views(shape.occupancy, shape.colors, views))
        t0 = time.perf_counter()
        res = run_multi_image(_STATE["pipe"], images, mode="multidiffusion", seed=i).output
        row[f"seconds_{n}"] = time.perf_counter() - t0
        row[str(n)] = score(res.occupancy[0], res.colors[0], shape, views)
        if _STATE["ref_samples"]:
            row[f"reference_{n}"] = reference_iou(shape, views, samples=_STATE["ref_samples"])
    return row


def table(rows: list[dict], device: str) -> str:
    """The markdown table of the paired comparison."""
    from trellis_mv.eval import paired_bootstrap_ci, wilcoxon_p

    n = len(rows)
    lines = [
        f"Proxy model, multidiffusion, 1 view (front) against 4 (front, right, back, left); {n} held-out shapes, "
        f"paired on shape and noise seed; {device}.",
        "",
        "| measure | 1 view | 4 views | 4 − 1 (mean, 95% bootstrap CI) | Wilcoxon p | shapes |",
        "|---|---|---|---|---|---|",
    ]
    diffs = {}
    for key, label, _ in METRICS:
        a = np.array([r["1"][key] for r in rows], dtype=float)
        b = np.array([r["4"][key] for r in rows], dtype=float)
        ok = ~(np.isnan(a) | np.isnan(b))
        a, b = a[ok], b[ok]
        d = b - a
        lo, hi = paired_bootstrap_ci(d)
        diffs[key] = (a.mean(), b.mean(), d.mean(), lo, hi)
        lines.append(f"| {label} | {a.mean():.3f} | {b.mean():.3f} | {d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                     f"{wilcoxon_p(d):.1e} | {ok.sum()} |")
    if "reference_1" in rows[0]:
        r1 = np.array([r["reference_1"]["ideal"] for r in rows])
        r4 = np.array([r["reference_4"]["ideal"] for r in rows])
        rr = np.array([r["reference_1"]["random"] for r in rows])
        lines += [
            "",
            "IoU reference points (same shapes): "
            f"a random other shape {rr.mean():.3f}; a perfect model from 1 view {r1.mean():.3f}, from 4 views {r4.mean():.3f} "
            f"(ideal gain {np.mean(r4 - r1):+.3f}).",
        ]
    if "hidden_seen_on_front_voxels" in rows[0]:
        share = np.mean([r["hidden_seen_on_front_voxels"] for r in rows])
        lines += [
            "",
            f"Of the surface faces the front hides and the 4 views show, {share:.3f} lie on voxels the front shows (their "
            "colour is that voxel's), so a 1-view result that is right on every shown voxel and wrong elsewhere scores "
            f"{share:.3f} there, and the largest possible gain is {1 - share:+.3f}.",
        ]
    s1 = np.mean([r["seconds_1"] for r in rows])
    s4 = np.mean([r["seconds_4"] for r in rows])
    g = {k: v for k, v in diffs.items()}
    targets = [
        ("1-view given-view silhouette IoU >= 0.95", g["given_silhouette_iou"][0], g["given_silhouette_iou"][0] >= 0.95),
        ("1-view given-view colour accuracy >= 0.95", g["given_color_acc"][0], g["given_color_acc"][0] >= 0.95),
        ("IoU gain 4 − 1 >= +0.10", g["iou"][2], g["iou"][2] >= 0.10),
        ("hidden colour accuracy (seen by 4) gain >= +0.6", g["hidden_color_acc_seen"][2], g["hidden_color_acc_seen"][2] >= 0.6),
        ("front silhouette IoU drop 1 → 4 <= 0.01", -g["first_silhouette_iou"][2], -g["first_silhouette_iou"][2] <= 0.01),
    ]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {v:+.3f} | {'yes' if ok else 'no'} |" for t, v, ok in targets]
    lines += ["", f"Seconds per generation (this device, workers sharing it): 1 view {s1:.2f}, 4 views {s4:.2f}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1, help="processes, each on its own slice of the shapes")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--reference-samples", type=int, default=8, help="draws per reference IoU (0: skip)")
    p.add_argument("--time-limit", type=float, help="stop taking results after this many seconds (the table covers those in)")
    p.add_argument("--out", help="write the table (markdown) here and the per-shape scores beside it (.json)")
    p.add_argument("--from-json", help="rebuild the table from per-shape scores written earlier")
    a = p.parse_args()
    if a.from_json:
        data = json.loads(Path(a.from_json).read_text())
        rows, device = data["rows"], data["device"]
    else:
        import torch

        device = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else f"CPU ({a.threads} thread(s) per process)"
        t0 = time.perf_counter()
        rows = []
        init = (a.device, a.reference_samples, a.threads)
        if a.workers > 1:
            with mp.get_context("spawn").Pool(a.workers, initializer=_init, initargs=init) as pool:
                for row in pool.imap_unordered(_work, range(a.shapes)):
                    rows.append(row)
                    if a.time_limit and time.perf_counter() - t0 > a.time_limit:
                        print(f"time limit: stopping after {len(rows)} shapes", flush=True)
                        pool.terminate()
                        break
        else:
            _init(*init)
            for i in range(a.shapes):
                rows.append(_work(i))
        rows.sort(key=lambda r: r["shape"])
        print(f"{len(rows)} shapes in {time.perf_counter() - t0:.0f} s", flush=True)
    text = table(rows, device)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
        if not a.from_json:
            Path(a.out).with_suffix(".json").write_text(json.dumps({"device": device, "rows": rows}, indent=0, allow_nan=True))


if __name__ == "__main__":
    main()
