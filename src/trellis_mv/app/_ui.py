"""The page: photos and view angles, an aggregator per stage, seed/steps/guidance; one run or a comparison.

The photos are prepared (:func:`trellis_mv._images.prepare_photos`) and previewed as they are
uploaded; progress is reported per denoising step with an estimate of the time left. One
pipeline serves every browser tab. Runs go through Gradio's queue one at a time (both
buttons share one concurrency slot), and a lock guards the pipeline as well; a failed run
shows its message in the page and the app keeps serving.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr

from .._errors import TrellisMVError
from .._images import PreparedPhoto, prepare_photos
from .._registry import Registry, get_registry
from .._views import camera_name
from ..proxy import example_images
from ._options import (
    MAX_PHOTOS,
    MAX_STEPS,
    InputError,
    RunOptions,
    aggregator_table,
    check_cameras,
    check_photos,
    describe,
    run_options,
    stage_spec,
)
from ._run import StepClock, default_params, load_pipeline, run, stage_names, stage_steps

__all__ = ["App", "build_app", "serve"]

logger = logging.getLogger("trellis_mv.app")
NONE = "(none)"
KEEP_RUNS = 32
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


class App:
    """The shared state behind the page: one pipeline, a lock around it, a folder of recent runs."""

    def __init__(self, pipeline: Any, *, model: str = "proxy", registry: Registry | None = None,
                 work_dir: str | Path | None = None) -> None:
        self.pipeline = pipeline
        self.model = model
        self.registry = registry or get_registry()
        self.stages = stage_names(pipeline)
        self.defaults = default_params(pipeline)
        self.names = getattr(pipeline, "named_cameras", None)
        self.lock = threading.Lock()
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="trellis-mv-app-"))
        if work_dir is None:
            atexit.register(shutil.rmtree, self.work_dir, True)
        self._runs: deque[Path] = deque()
        self._count = itertools.count(1)
        self.last_run = 0

    def new_run_dir(self) -> Path:
        """A fresh output folder; the oldest beyond the last ``KEEP_RUNS`` are deleted."""
        self.last_run = next(self._count)
        path = self.work_dir / f"run-{self.last_run:05d}-{time.strftime('%H%M%S')}"
        self._runs.append(path)
        while len(self._runs) > KEEP_RUNS:
            old = self._runs.popleft()
            for folder in (old, *old.parent.glob(f"{old.name}-*")):  # with its photos and downloads
                shutil.rmtree(folder, ignore_errors=True)
        return path

    def prepare(self, photos: Sequence[Path], folder: Path) -> tuple[list[Path], list[PreparedPhoto]]:
        """The photos after :func:`~trellis_mv._images.prepare_photos`, saved in ``folder`` under their own names."""
        prepared = prepare_photos(photos)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, (photo, done) in enumerate(zip(photos, prepared)):
            path = folder / f"{i}_{Path(photo).stem}.png"  # the name still says the view (front.png -> 0_front.png)
            done.image.save(path)
            paths.append(path)
        return paths, prepared

    def generate(self, opts: RunOptions, clock: StepClock | None = None, *, prepare: bool = False
                 ) -> tuple[dict[str, Any], Path]:
        """Run ``opts`` on the shared pipeline (its photos prepared first when ``prepare``); returns the summary
        (with per-stage seconds) and the folder."""
        out = self.new_run_dir()
        photos = self.prepare(opts.photos, out.with_name(out.name + "-photos"))[0] if prepare else opts.photos
        clock = clock or StepClock(stage_steps(self.pipeline, opts.params))
        with self.lock:
            clock.begin()
            summary = run(self.pipeline, photos, out, mode=opts.mode, stages=opts.stages, params=opts.params,
                          seed=opts.seed, cameras=opts.cameras, on_step=clock)
        summary["stage_seconds"] = {k: round(v, 3) for k, v in clock.seconds.items()}
        return summary, out

    def defaults_line(self, key: str) -> str:
        values = [f"{s} {self.defaults[s][key]}" for s in self.stages if key in self.defaults.get(s, {})]
        return ", ".join(values) if values else "the model's own"


# ------------------------------------------------------------------------------------------
# what the page shows of a result
def _outputs(summary: dict[str, Any], out: Path) -> tuple[str | None, str | None, list[str]]:
    """The result's mesh and picture (``mesh.glb``, ``comparison.png``), and every file."""
    names = summary.get("outputs", [])
    glb = next((str(out / n) for n in names if n == "mesh.glb"), None)
    png = next((str(out / n) for n in names if n == "comparison.png"), None)
    return glb, png, [str(out / n) for n in names]


_NO_DIAGNOSTICS = ("### Diagnostics\nNone for this run: the per-element aggregators (visibility, attention, robust) "
                   "record which view drove each voxel, and it is shown here, apart from the result.")
_DIAGNOSTICS = ("### Diagnostics\nNot the result: the voxels coloured by the view that drove each one, and renders "
                "of that colouring and of the views' disagreement.")


def _diagnostics(summary: dict[str, Any], out: Path) -> tuple[str | None, str | None]:
    """What a per-element aggregator recorded: the voxels coloured by the view that drove them, and its picture."""
    names = summary.get("outputs", [])
    glb = str(out / "dominant_view.glb") if "dominant_view.glb" in names else None
    png = str(out / "dominant_view.png") if "dominant_view.png" in names else None
    return glb, png


def _view_label(camera: Any) -> str:
    if not camera:
        return "?"
    from ..proxy import view_name

    return view_name(tuple(camera))


def summary_markdown(summary: dict[str, Any], names: Any = None) -> str:
    """The run in one paragraph: views, view angles (named as the model names them), aggregators, seed, time."""
    cameras = summary.get("cameras") or []
    views = [camera_name(c, names) if c else "?" for c in cameras] if any(cameras) else []
    aggs = ", ".join(f"{s} = **{a}**" for s, a in summary.get("aggregators", {}).items())
    seconds = summary.get("seconds", {}).get("total", "?")
    shown = f" ({', '.join(views)})" if views else ""
    return (f"**{summary.get('num_views')} views**{shown} · aggregators: {aggs} · seed {summary.get('seed')} · "
            f"{seconds} s in all. Below: each photo above a render of the result from its view, then other sides.")


def cost_markdown(summary: dict[str, Any], *, compact: bool = False) -> str:
    """Per-stage cost: aggregator, model calls, seconds (``compact``: no aggregator column, for Compare's columns).

    A stage's seconds run from the end of the previous stage's last step (the run's start for the
    first) to the end of its own last step.
    """
    cost = summary.get("cost", {})
    calls = {stage: c.get("model_forwards", "?") for stage, c in cost.get("stages", {}).items()}
    calls["total"] = cost.get("model_forwards", "?")
    seconds = summary.get("stage_seconds", {})
    head = ["stage", "calls", "s"] if compact else ["stage", "aggregator", "model calls", "seconds"]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1) if compact else "|---|---|---:|---:|"]
    for stage, agg in summary.get("aggregators", {}).items():
        secs = seconds.get(stage, next((v for k, v in seconds.items() if stage in k.split("+")), None))
        cells = [stage, calls.get(stage, "?"), "?" if secs is None else f"{secs:.2f}"]
        rows.append("| " + " | ".join(map(str, cells if compact else [stage, agg, *cells[1:]])) + " |")
    total = summary.get("seconds", {}).get("total")
    if total is not None and seconds:
        rest = f"{total - sum(seconds.values()):.2f}"
        rows.append(f"| writing files | | {rest} |" if compact else f"| writing the mesh and picture | | | {rest} |")
    shown = total if total is not None else "?"
    rows.append(f"| **total** | **{calls.get('total', '?')}** | **{shown}** |" if compact
                else f"| **total** | | **{calls.get('total', '?')}** | **{shown}** |")
    return "\n".join(rows)


def prepared_preview(files: Sequence[str] | None, enabled: bool) -> tuple[list[tuple[Any, str]], str]:
    """What the model will see of the uploaded photos, with one line per photo (a warning where one is due)."""
    if not files:
        return [], ""
    try:
        paths = check_photos(files)
    except InputError as exc:
        return [], f"**Error:** {exc}"
    if not enabled:
        return [(str(p), f"{i + 1}: {p.name} (as uploaded)") for i, p in enumerate(paths)], \
            "Photos are used as uploaded. Tick *Prepare photos* to cut out plain backgrounds and centre the objects."
    done = prepare_photos(paths)
    lines = [f"- photo {i + 1} ({p.name}): {'**warning:** ' + d.warning if d.warning else d.note}"
             for i, (p, d) in enumerate(zip(paths, done))]
    return [(d.image, f"{i + 1}: {p.name}") for i, (p, d) in enumerate(zip(paths, done))], "\n".join(lines)


def _download_copies(results: Sequence[tuple[str, dict[str, Any], Path]]) -> list[str]:
    """Every compared run's files under names that say which run they are (``1-multidiffusion-mesh.glb``)."""
    if not results:
        return []
    folder = results[-1][2].with_name(results[-1][2].name + "-downloads")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (spec, summary, out) in enumerate(results, 1):
        label = re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec.split(":")[0])
        for name in summary.get("outputs", []):
            target = folder / f"{k}-{label}-{name}"
            shutil.copyfile(out / name, target)
            paths.append(str(target))
    return paths


def _error(exc: BaseException) -> str:
    if isinstance(exc, (InputError, TrellisMVError, ValueError, OSError)):
        return f"**Error:** {exc}"
    logger.exception("run failed")
    return (f"**Error:** the run failed ({type(exc).__name__}: {exc}). The app is still serving; "
            "the server log has the details.")


def _progress(progress: Any, steps: dict[str, int | None], runs: int = 1) -> StepClock:
    """A :class:`StepClock` that moves the page's progress bar: stage, step and the time left."""

    def report(fraction: float | None, text: str) -> None:
        progress(fraction, desc=text)

    return StepClock(steps, runs=runs, report=report)


# ------------------------------------------------------------------------------------------
# the page
def build_app(app: App) -> gr.Blocks:
    """The Gradio page over ``app`` (not launched)."""
    names = [i.name for i in app.registry.list()]
    default = "multidiffusion" if "multidiffusion" in names else names[0]

    def info_of(name: str | None) -> str:
        try:
            return describe(app.registry.info(name)) if name else ""
        except TrellisMVError:
            return ""

    with gr.Blocks(title="trellis-mv", analytics_enabled=False) as page:
        gr.Markdown(f"# trellis-mv: 3D from several photos\nModel: **{app.model}** · stages: {', '.join(app.stages)}. "
                    "Upload photos of one object, choose how the views are combined at each stage, and run.")
        with gr.Row():
            with gr.Column(scale=2):
                photos = gr.File(label=f"Photos (1 to {MAX_PHOTOS}, one object)", file_count="multiple",
                                 elem_id="photos", height=180)
                views = gr.Textbox(label="View angles (optional)", elem_id="views", lines=1,
                                   placeholder="front; right; back; left   or   0,0; 90,10; ; 270,0",
                                   info="One per photo, in upload order, separated by ';': front, right, back, left, "
                                        "top or azimuth,elevation in degrees; an empty entry, or an empty field, means "
                                        "unknown. Camera-aware aggregators (visibility) need one for every photo.")
                prepare = gr.Checkbox(value=True, label="Prepare photos", elem_id="prepare",
                                      info="Cut each object out of a plain background and centre all photos at one "
                                           "scale. No learned matting: a busy background stays, with a warning.")
                prepared = gr.Gallery(label="What the model will see", elem_id="prepared", columns=4, height=150,
                                      object_fit="contain", interactive=False, allow_preview=False)
                prepare_notes = gr.Markdown(elem_id="prepare-notes")
                examples = example_images()
                gr.Examples(
                    examples=[[[str(p) for p in examples], "front; right; back; left"],
                              [[str(examples[0]), str(examples[2])], "front; back"],
                              [[str(examples[0])], ""]],
                    inputs=[photos, views], label="Example photos (the proxy model's held-out shape)",
                    example_labels=["4 views: front, right, back, left", "2 views: front, back", "1 view: front"],
                    elem_id="examples",
                )
                with gr.Row():
                    seed = gr.Number(label="Seed", value=42, precision=0, elem_id="seed")
                    steps = gr.Textbox(label="Steps", value="", elem_id="steps", placeholder="default",
                                       info=f"1 to {MAX_STEPS}; empty: {app.defaults_line('steps')}")
                    guidance = gr.Textbox(label="Guidance strength", value="", elem_id="guidance", placeholder="default",
                                          info=f"empty: {app.defaults_line('guidance_strength')}")
                with gr.Accordion("Registered aggregators", open=False):
                    gr.Markdown(aggregator_table(app.registry))
            with gr.Column(scale=3):
                status = gr.Markdown("Upload photos and press Run.", elem_id="status")
                with gr.Tabs():
                    with gr.Tab("Generate", id="generate"):
                        stage_inputs: dict[str, tuple[gr.Dropdown, gr.Textbox]] = {}
                        with gr.Row():
                            for stage in app.stages:
                                with gr.Column(min_width=200):
                                    dd = gr.Dropdown(names, value=default, label=f"Aggregator: {stage}",
                                                     info=info_of(default), elem_id=f"agg-{stage}")
                                    opts = gr.Textbox(label=f"Options: {stage}", placeholder="option=value, ...",
                                                      elem_id=f"opts-{stage}")
                                    dd.change(lambda n: gr.update(info=info_of(n)), dd, dd, queue=False)
                                    stage_inputs[stage] = (dd, opts)
                        run_btn = gr.Button("Run", variant="primary", elem_id="run")
                        model3d = gr.Model3D(label="Result: mesh.glb", elem_id="model3d", height=320,
                                             clear_color=(0.15, 0.15, 0.15, 1.0))
                        summary_md = gr.Markdown(elem_id="summary")
                        picture = gr.Image(label="Input views above renders of the result", elem_id="picture",
                                           type="filepath", interactive=False, show_label=False)
                        cost_md = gr.Markdown(elem_id="cost")
                        with gr.Column(elem_id="diagnostics"):  # always mounted: a hidden 3D viewer never draws
                            diag_md = gr.Markdown(_NO_DIAGNOSTICS, elem_id="diagnostics-about")
                            diag3d = gr.Model3D(label="Diagnostics: dominant_view.glb", elem_id="diagnostics3d",
                                                height=260, clear_color=(0.15, 0.15, 0.15, 1.0))
                            diag_png = gr.Image(label="Diagnostics: dominant_view.png", elem_id="diagnostics-picture",
                                                type="filepath", interactive=False)
                        files = gr.File(label="Downloads: GLB, picture, summary JSON", file_count="multiple",
                                        interactive=False, elem_id="downloads")
                    with gr.Tab("Compare", id="compare"):
                        gr.Markdown("Two or three aggregators, each for every stage, on the same photos and seed.")
                        cmp_inputs: list[tuple[gr.Dropdown, gr.Textbox]] = []
                        cmp_outputs: list[tuple[gr.Markdown, gr.Model3D, gr.Image, gr.Markdown]] = []
                        firsts = [default, next((n for n in names if n != default), default), NONE]
                        with gr.Row():
                            for k, first in enumerate(firsts):
                                with gr.Column(min_width=220):
                                    choices = names if k < 2 else [NONE, *names]
                                    dd = gr.Dropdown(choices, value=first, label=f"Aggregator {k + 1}",
                                                     info=info_of(first), elem_id=f"cmp-agg-{k}")
                                    opts = gr.Textbox(label=f"Options {k + 1}", placeholder="option=value, ...",
                                                      elem_id=f"cmp-opts-{k}")
                                    dd.change(lambda n: gr.update(info=info_of(n)), dd, dd, queue=False)
                                    cmp_inputs.append((dd, opts))
                                    cmp_outputs.append((
                                        gr.Markdown(elem_id=f"cmp-title-{k}"),
                                        gr.Model3D(label=f"Result {k + 1}", height=240, elem_id=f"cmp-model3d-{k}",
                                                   clear_color=(0.15, 0.15, 0.15, 1.0)),
                                        gr.Image(label=f"Views {k + 1}", type="filepath", interactive=False,
                                                 elem_id=f"cmp-picture-{k}", show_label=False),
                                        gr.Markdown(elem_id=f"cmp-cost-{k}"),
                                    ))
                        cmp_btn = gr.Button("Compare", variant="primary", elem_id="compare")
                        cmp_files = gr.File(label="Downloads of every compared run (numbered as the columns)",
                                            file_count="multiple", interactive=False, elem_id="cmp-downloads")

        common = [photos, views, seed, steps, guidance, prepare]
        for trigger in (photos.change, prepare.change):
            trigger(prepared_preview, [photos, prepare], [prepared, prepare_notes],
                    concurrency_limit=2, concurrency_id="prepare", show_progress="minimal")

        def running() -> str:
            return "Running…"  # a new request clears what the last one said, error or not

        def on_run(data: dict[Any, Any], progress: gr.Progress = gr.Progress()) -> list[Any]:  # noqa: B008
            empty = [None, "", None, "", _NO_DIAGNOSTICS, None, None, None]
            try:
                progress(0, desc="checking the input")
                opts = run_options(
                    data[photos], data[views], app.stages,
                    {s: (data[dd], data[tb]) for s, (dd, tb) in stage_inputs.items()},
                    seed=data[seed], steps=data[steps], guidance=data[guidance], registry=app.registry,
                    names=app.names,
                )
                clock = _progress(progress, stage_steps(app.pipeline, opts.params))
                summary, out = app.generate(opts, clock, prepare=bool(data[prepare]))
                number = app.last_run
            except Exception as exc:
                return [_error(exc), *empty]
            glb, png, paths = _outputs(summary, out)
            diag_glb, diag_pic = _diagnostics(summary, out)
            done = f"Done (run {number}): {summary.get('num_views')} views, {summary.get('seconds', {}).get('total', '?')} s."
            return [done, glb, summary_markdown(summary, app.names), png, cost_markdown(summary),
                    _NO_DIAGNOSTICS if diag_glb is None else _DIAGNOSTICS, diag_glb, diag_pic, paths]

        run_btn.click(running, None, status, queue=False).then(
            on_run, inputs={*common, *(c for pair in stage_inputs.values() for c in pair)},
            outputs=[status, model3d, summary_md, picture, cost_md, diag_md, diag3d, diag_png, files],
            concurrency_limit=1, concurrency_id="pipeline", api_name="generate",
        )

        def on_compare(data: dict[Any, Any], progress: gr.Progress = gr.Progress()) -> list[Any]:  # noqa: B008
            results: list[Any] = []
            try:
                progress(0, desc="checking the input")
                base = run_options(data[photos], data[views], app.stages, {}, seed=data[seed], steps=data[steps],
                                   guidance=data[guidance], registry=app.registry, names=app.names)
                specs = [stage_spec(data[dd], data[tb], app.registry, where=f"aggregator {k + 1}")
                         for k, (dd, tb) in enumerate(cmp_inputs) if data[dd] and data[dd] != NONE]
                for k, spec in enumerate(specs):
                    check_cameras(spec, len(base.photos), base.cameras, app.registry, where=f"aggregator {k + 1}")
                if len(specs) < 2:
                    raise InputError("compare needs at least two aggregators: choose one in 'Aggregator 2'")
                clock = _progress(progress, stage_steps(app.pipeline, base.params), len(specs))
                for spec in specs:
                    results.append((spec, *app.generate(replace(base, mode=spec), clock, prepare=bool(data[prepare]))))
                downloads = _download_copies(results)
            except Exception as exc:
                return [_error(exc), *(["", None, None, ""] * len(cmp_inputs)), None]
            shown: list[Any] = []
            for k in range(len(cmp_inputs)):
                if k >= len(results):
                    shown += ["", None, None, ""]
                    continue
                spec, summary, out = results[k]
                glb, png, _ = _outputs(summary, out)
                seconds = summary.get("seconds", {}).get("total", "?")
                shown += [f"### {k + 1} · {spec}\n{summary.get('num_views')} views · seed {summary.get('seed')} · "
                          f"{seconds} s", glb, png, cost_markdown(summary, compact=True)]
            return [f"Done (run {app.last_run}): compared {', '.join(r[0] for r in results)} on "
                    f"{results[0][1].get('num_views')} views.", *shown, downloads]

        cmp_btn.click(running, None, status, queue=False).then(
            on_compare, inputs={*common, *(c for pair in cmp_inputs for c in pair)},
            outputs=[status, *(c for group in cmp_outputs for c in group), cmp_files],
            concurrency_limit=1, concurrency_id="pipeline", api_name="compare",
        )
    page.queue(max_size=32)
    return page


def serve(model: str = "proxy", *, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
          quiet: bool = False) -> tuple[gr.Blocks, str]:
    """Build the pipeline and the page, and serve it; returns the page and its URL (``block=False``: at once)."""
    app = App(load_pipeline(model), model=model)
    page = build_app(app)
    _, url, _ = page.launch(
        server_name=host, server_port=port, prevent_thread_lock=not block, quiet=quiet, share=False,
        inbrowser=False, ssr_mode=False, theme=THEME, allowed_paths=[str(app.work_dir)], footer_links=[],
    )
    return page, url
