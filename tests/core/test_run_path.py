"""The one run path over a minimal adapter: two stages (dense then sparse), as the real ones are built."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import trellis_mv
from trellis_mv import (
    AggregatorError,
    AggregatorOptionError,
    ImageError,
    OutputError,
    ParameterError,
    UnknownAggregatorError,
    ViewError,
    generate,
    run_multi_image,
)
from trellis_mv.run import parse_stage, plan_stages
from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler
from trellis_mv.sparse import SparseTensor
from trellis_mv.testing import TinyDenoiser


class TwoStage:
    """A complete adapter in 30 lines: dense structure, then sparse features on the occupied cells."""

    name = "two-stage"

    def __init__(self, shared: bool = False) -> None:
        first = FlowEulerGuidanceIntervalSampler()
        self.samplers = {"sparse_structure": first, "texture": first if shared else FlowEulerGuidanceIntervalSampler()}
        self.model = TinyDenoiser()
        self.sampled = 0

    def prepare(self, images):
        return [im if isinstance(im, torch.Tensor) else torch.full((5, 8), float(sum(im.convert("L").getdata())) / 1e5)
                for im in images]

    def sample(self, views, *, seed, num_samples, params):
        self.sampled += 1
        cond = torch.stack(list(views))  # the "encoder": views are already token tensors
        neg = torch.zeros_like(cond[:1])
        merged = {s: {"steps": 3, "guidance_strength": 3.0, "guidance_interval": (0.0, 1.0), **params.get(s, {})}
                  for s in self.samplers}
        g = torch.Generator().manual_seed(seed)
        dense = self.samplers["sparse_structure"].sample(
            self.model, torch.randn(num_samples, 4, 2, 2, generator=g), cond, neg, verbose=False,
            **merged["sparse_structure"]).samples
        occupied = torch.argwhere(dense[:, 0] > 0)
        coords = torch.cat([occupied[:, :1], occupied[:, 1:], torch.zeros_like(occupied[:, :1])], 1).int()
        noise = SparseTensor(torch.randn(len(coords), 4, generator=g), coords, batch_size=num_samples)
        return self.samplers["texture"].sample(self.model, noise, cond, neg, verbose=False, **merged["texture"]).samples

    def export(self, result, folder):
        torch.save(result.output.feats, folder / "feats.pt")
        return ["feats.pt"]


def _views(n: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 8, generator=g) for _ in range(n)]


def test_per_stage_aggregators_and_records():
    pipe = TwoStage()
    result = run_multi_image(pipe, _views(3), mode="multidiffusion", stages={"texture": ("single", {"view": 2})},
                             num_samples=2)
    assert isinstance(result.output, SparseTensor) and result.output.shape[0] == 2
    patches = result.patches
    assert patches["sparse_structure"].name == "multidiffusion"
    assert all(r.views == (0, 1, 2) and r.rows == 2 * 4 for r in patches["sparse_structure"].records)
    assert all(r.views == (2,) for r in patches["texture"].records)
    assert all("sample" not in vars(s) for s in pipe.samplers.values())
    assert result.cost()["stages"]["sparse_structure"]["model_forwards"] == 3


@pytest.mark.parametrize("seed", range(4))
def test_one_view_everywhere_equals_the_unpatched_adapter(seed):
    view = _views(1, seed)
    unpatched = TwoStage().sample(view, seed=0, num_samples=1, params={})
    for mode in ("multidiffusion", "stochastic", "single"):
        out = run_multi_image(TwoStage(), view, mode=mode, seed=0).output
        torch.testing.assert_close(out.feats, unpatched.feats, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"stages": {"shape": "stochastic"}}, ParameterError, r"unknown stage 'shape'; this model's stages are: "
                                                             "sparse_structure, texture"),
        ({"mode": "nope"}, UnknownAggregatorError, "unknown aggregator 'nope'"),
        ({"stages": {"texture": "single:view=5"}}, AggregatorOptionError, r"view=5 but only 3 view\(s\)"),
        ({"mode": "stochastic:ordre=random"}, AggregatorOptionError, "has no option 'ordre'"),
        ({"params": {"texture": {"steps": 0}}}, ParameterError, "steps must be an integer >= 1"),
        ({"params": {"texture": {"steps": 2.5}}}, ParameterError, "steps must be an integer >= 1"),
        ({"params": {"texture": {"guidance_strength": float("nan")}}}, ParameterError, "must be a finite number"),
        ({"params": {"texture": {"guidance_strength": float("inf")}}}, ParameterError, "must be a finite number"),
        ({"params": {"texture": {"guidance_interval": (0.5,)}}}, ParameterError, "pair \\(lo, hi\\)"),
        ({"params": {"texture": {"guidance_rescale": -0.1}}}, ParameterError, r"must be in \[0, 1\]"),
        ({"params": {"texture": {"stpes": 3}}}, ParameterError, "unknown texture sampler parameter 'stpes'"),
        ({"params": {"colour": {"steps": 3}}}, ParameterError, "unknown stage 'colour'"),
        ({"params": {"texture": {"cfg_strength": 3}}}, ParameterError, "TRELLIS.2 uses guidance_strength"),
        ({"params": [("texture", 3)]}, ParameterError, "params must be a dict"),
        ({"seed": -1}, ParameterError, "seed must be an integer >= 0"),
        ({"seed": 2**64}, ParameterError, "seed must be an integer >= 0 and <= 9223372036854775807"),
        ({"seed": "7"}, ParameterError, "seed must be an integer"),
        ({"num_samples": 0}, ParameterError, "num_samples must be an integer >= 1"),
        ({"max_batch": 0}, ParameterError, "max_batch must be an integer >= 1"),
        ({"max_batch": 2, "num_samples": 3}, ParameterError, "max_batch=2 is smaller than num_samples=3"),
        ({"weights": [1, 2]}, ViewError, "weights has 2 entries but the conditioning holds 3 views"),
        ({"weights": [1, float("nan"), 1]}, ViewError, "finite and non-negative"),
        ({"cameras": ["front", "sideways", None]}, ViewError, "camera 'sideways' is not a camera"),
        ({"cameras": ["front"]}, ViewError, "cameras has 1 entries but there are 3 views"),
        ({"cameras": [(0, 120), None, None]}, ViewError, "elevation must be between -90 and 90"),
    ],
)
def test_bad_input_is_refused_before_any_model_work(kwargs, error, message):
    pipe = TwoStage()
    with pytest.raises(error, match=message):
        run_multi_image(pipe, _views(3), **kwargs)
    assert pipe.sampled == 0 and pipe.model.forwards == 0


def test_no_views_and_unknown_view_types():
    with pytest.raises(ImageError, match="no views"):
        run_multi_image(TwoStage(), [])
    with pytest.raises(ImageError, match="images must be a list"):
        run_multi_image(TwoStage(), "front.png")


def test_non_finite_views_and_predictions_name_the_stage_and_step():
    views = _views(2)
    views[1][0, 0] = float("nan")
    with pytest.raises(ViewError, match=r"view\(s\) \[1\] holds NaN or Inf"):
        run_multi_image(TwoStage(), views)

    class Exploding:
        name = "exploding"

        def __call__(self, step):
            pred = step.guide(step.fuse(step.predict()))
            return pred * float("inf") if step.index == 2 else pred

    pipe = TwoStage()
    with pytest.raises(AggregatorError, match=r"prediction in stage 'sparse_structure', step 2 \(t=.*\) holds NaN or Inf"):
        run_multi_image(pipe, _views(2), mode=Exploding())
    assert all("sample" not in vars(s) for s in pipe.samplers.values())


def test_on_a_gpu_a_non_finite_prediction_is_read_at_the_end_of_the_run_and_names_its_first_step(monkeypatch):
    import trellis_mv._patch as patch_module

    monkeypatch.setattr(patch_module, "DEFERRED_DEVICES", frozenset({"cpu"}))  # the GPU's path, on the CPU
    steps: list[int] = []

    class Exploding:
        name = "exploding"

        def __call__(self, step):
            steps.append(step.index)
            pred = step.guide(step.fuse(step.predict()))
            return pred * float("inf") if step.index in (2, 3) else pred

    pipe = TwoStage()
    with pytest.raises(AggregatorError, match=r"prediction in stage 'sparse_structure', step 2 \(t=.*\) holds NaN or Inf"):
        run_multi_image(pipe, _views(2), mode=Exploding(), params={"sparse_structure": {"steps": 6}})
    assert steps == [0, 1, 2, 3, 4, 5]  # the stage ran to its end (no read inside it), the next did not start
    assert all("sample" not in vars(s) for s in pipe.samplers.values())


def test_stages_sharing_a_sampler_share_one_patch():
    pipe = TwoStage(shared=True)
    patches = run_multi_image(pipe, _views(1), mode="stochastic").patches
    assert patches["sparse_structure"] is patches["texture"] and patches["texture"].stage == "sparse_structure+texture"
    assert patches["texture"].runs == 2
    with pytest.raises(ParameterError, match="share one sampler instance, so they need the same aggregator"):
        run_multi_image(TwoStage(shared=True), _views(1), stages={"texture": "single"})


@pytest.mark.parametrize("shared", [True, False])
def test_cost_counts_every_forward_once(shared):
    pipe = TwoStage(shared=shared)
    forwards = []
    model = pipe.model
    pipe.model = lambda *a, **kw: forwards.append(1) or model(*a, **kw)
    cost = run_multi_image(pipe, _views(3), mode="multidiffusion").cost()
    assert cost["model_forwards"] == len(forwards) == sum(s["model_forwards"] for s in cost["stages"].values())
    assert list(cost["stages"]) == (["sparse_structure+texture"] if shared else ["sparse_structure", "texture"])


def test_stage_aliases_and_aggregator_strings():
    plan = plan_stages(["sparse_structure", "texture"], "multidiffusion", {"SS": "stochastic:order=random,seed=2"},
                       aliases={"ss": "sparse_structure"})
    assert (plan["sparse_structure"].order, plan["sparse_structure"].seed) == ("random", 2)
    assert plan["texture"].name == "multidiffusion"


def test_parse_stage_errors():
    with pytest.raises(ParameterError, match="expected STAGE=AGGREGATOR"):
        parse_stage("multidiffusion")
    with pytest.raises(AggregatorOptionError, match="is not OPTION=VALUE"):
        parse_stage("shape=stochastic:random")


@given(st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=5))
def test_option_lists_round_trip_through_the_command_line_spelling(values):
    """A list option written ``[a, b]`` or ``a;b`` reaches the aggregator as the same list."""
    bracket = trellis_mv.run.parse_aggregator(f"weighted:weights=[{', '.join(map(repr, values))}]")[1]["weights"]
    semicolons = trellis_mv.run.parse_aggregator(f"weighted:weights={';'.join(map(repr, values))},x=1")[1]
    assert list(bracket) == values
    assert list(semicolons["weights"]) == values if len(values) > 1 else semicolons["weights"] == values[0]


def test_explicit_registry_is_the_only_one_consulted():
    empty = trellis_mv.Registry()
    with pytest.raises(UnknownAggregatorError, match="registered aggregators: none"):
        run_multi_image(TwoStage(), _views(1), registry=empty)


def test_concurrent_runs_on_one_adapter_are_serialised_and_leave_no_patch():
    pipe = TwoStage()
    errors: list[BaseException] = []
    active = {"now": 0, "max": 0}
    original = pipe.sample

    def slow_sample(*args, **kwargs):
        active["now"] += 1
        active["max"] = max(active["max"], active["now"])
        time.sleep(0.02)
        try:
            return original(*args, **kwargs)
        finally:
            active["now"] -= 1

    pipe.sample = slow_sample

    def work(i):
        try:
            run_multi_image(pipe, _views(2, i), mode=("multidiffusion", "stochastic")[i % 2], seed=i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and active["max"] == 1
    assert all(not any(k in vars(s) for k in ("sample", "_inference_model", "_trellis_mv_patch"))
               for s in pipe.samplers.values())


def test_patching_one_sampler_from_two_threads_is_refused_and_restored():
    sampler = FlowEulerGuidanceIntervalSampler()
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def work():
        barrier.wait()
        try:
            with trellis_mv.patch_sampler(sampler, "multidiffusion"):
                time.sleep(0.01)
            outcomes.append("patched")
        except trellis_mv.PatchError as exc:
            outcomes.append("refused" if "already patched" in str(exc) else str(exc))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(outcomes) <= {"patched", "refused"} and "patched" in outcomes
    assert not any(k in vars(sampler) for k in ("sample", "_inference_model", "_trellis_mv_patch"))


# -- outputs --------------------------------------------------------------------------------------


def test_generate_writes_everything_or_nothing(tmp_path):
    out = tmp_path / "run"
    summary = generate(TwoStage(), _views(2), out, seed=3)
    assert sorted(p.name for p in out.iterdir()) == [".trellis-mv.json", "feats.pt", "summary.json"]
    assert summary["outputs"] == ["feats.pt", "summary.json"]
    first = torch.load(out / "feats.pt")
    with pytest.raises(OutputError, match="holds an earlier run .*pass --overwrite"):
        generate(TwoStage(), _views(2), out, seed=4)

    class FailingExport(TwoStage):
        def export(self, result, folder):
            (folder / "half.bin").write_bytes(b"x")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        generate(FailingExport(), _views(2), out, seed=4, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [".trellis-mv.json", "feats.pt", "summary.json"]  # the earlier run, untouched
    assert torch.equal(torch.load(out / "feats.pt"), first)
    generate(TwoStage(), _views(2), out, seed=5, overwrite=True)
    assert json.loads((out / "summary.json").read_text())["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left beside it


def test_generate_refuses_folders_it_did_not_write_and_bad_paths(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(OutputError, match="holds files trellis-mv did not write"):
        generate(TwoStage(), _views(1), tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    with pytest.raises(OutputError, match="--out ''"):
        generate(TwoStage(), _views(1), "")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is not a folder"):
        generate(TwoStage(), _views(1), tmp_path / "file")
    pipe = TwoStage()
    with pytest.raises(ImageError):
        generate(pipe, [tmp_path / "missing.png"], tmp_path / "deep" / "new" / "out")
    assert not (tmp_path / "deep").exists() and pipe.sampled == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_writable_folder_in_a_read_only_parent(tmp_path):  # pragma: no cover - CI runs as root
    parent = tmp_path / "ro"
    (parent / "out").mkdir(parents=True)
    parent.chmod(0o555)
    try:
        generate(TwoStage(), _views(1), parent / "out")
        generate(TwoStage(), _views(1), parent / "out", overwrite=True, seed=9)
        assert sorted(p.name for p in (parent / "out").iterdir()) == [".trellis-mv.json", "feats.pt", "summary.json"]
    finally:
        parent.chmod(0o755)


def test_staging_inside_the_folder_when_its_parent_is_not_writable(tmp_path, monkeypatch):
    """The path a read-only parent takes, forced here (CI runs as root, which writes anywhere)."""
    from trellis_mv import _outputs

    out = tmp_path / "out"
    out.mkdir()
    generate(TwoStage(), _views(1), out, seed=1)
    real = _outputs._writable
    monkeypatch.setattr(_outputs, "_writable", lambda folder: False if Path(folder) == tmp_path else real(folder))
    generate(TwoStage(), _views(1), out, seed=2, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [".trellis-mv.json", "feats.pt", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staging_is_on_the_output_filesystem_not_tmpdir(tmp_path, monkeypatch):
    seen = []
    pipe = TwoStage()
    original = pipe.export

    def export(result, folder):
        seen.append(folder)
        return original(result, folder)

    pipe.export = export
    monkeypatch.setenv("TMPDIR", str(tmp_path / "elsewhere"))
    generate(pipe, _views(1), tmp_path / "out")
    assert seen[0].parent == tmp_path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_run_leaves_nothing_behind(tmp_path, sig):
    script = tmp_path / "slow.py"
    script.write_text(
        "import signal, sys, time\n"
        # a shell's background job starts with SIGINT ignored (and Python keeps it so): give it a terminal's handler
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_run_path import TwoStage, _views\n"
        "from trellis_mv.cli import _sigterm_as_interrupt\n"
        "import trellis_mv\n"
        "class Slow(TwoStage):\n"
        "    def export(self, result, folder):\n"
        "        (folder / 'partial.bin').write_bytes(b'x')\n"
        "        print('exporting', flush=True)\n"
        "        time.sleep(30)\n"
        "        return ['partial.bin']\n"
        "with _sigterm_as_interrupt():\n"
        f"    trellis_mv.generate(Slow(), _views(1), {str(tmp_path / 'out')!r})\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "exporting"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slow.py"]
