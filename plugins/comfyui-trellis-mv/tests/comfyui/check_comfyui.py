"""trellis-mv's nodes inside an unmodified ComfyUI: loaded from ``custom_nodes`` as ComfyUI loads any
extension, a tiny random-weight Hunyuan3D-2 DiT built with ComfyUI's own classes and loaded by its
``UNETLoader``, prompts run by ComfyUI's own executor (validation, caching, ``KSampler``, ``SaveLatent``).

Run by ``../test_comfyui.py`` in ComfyUI's environment; ``COMFYUI_SRC`` names the ComfyUI folder.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import sys
import types
import uuid
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

COMFY = Path(os.environ["COMFYUI_SRC"]).resolve()
EXTENSION = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TOKENS, WIDTH, LENGTH = 6, 32, 16  # tokens per view and their width (the stand-in encoder's), latent length
DIT = "tiny_hunyuan3d.safetensors"
SEEDS = (11, 12, 13)


class Server:
    """What ComfyUI's executor needs of its web server (its messages stay in ``executor.status_messages``)."""

    client_id = None
    last_node_id = None

    def send_sync(self, event: str, data: dict, sid: Any = None) -> None:
        pass


@pytest.fixture(scope="session")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    base = tmp_path_factory.mktemp("comfyui")
    custom, models = base / "custom_nodes", base / "diffusion_models"
    custom.mkdir()
    models.mkdir()
    (custom / EXTENSION.name).symlink_to(EXTENSION, target_is_directory=True)  # as a user links or clones it
    shutil.copy(HERE / "fixture_nodes.py", custom / "trellis_mv_test_fixtures.py")
    sys.path.insert(0, str(COMFY))
    from comfy.cli_args import args

    args.cpu = True
    import folder_paths

    folder_paths.folder_names_and_paths["custom_nodes"] = ([str(custom)], set())
    folder_paths.add_model_folder_path("diffusion_models", str(models), is_default=True)
    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_temp_directory(str(base / "temp"))
    import execution
    import nodes

    assert asyncio.run(nodes.load_custom_node(str(COMFY / "comfy_extras" / "nodes_hunyuan3d.py"), module_parent="comfy_extras"))
    asyncio.run(nodes.init_external_custom_nodes())
    write_tiny_dit(models / DIT)
    executor = execution.PromptExecutor(Server(), cache_type=execution.CacheType.CLASSIC)
    return types.SimpleNamespace(nodes=nodes, execution=execution, executor=executor, output=base / "output")


def write_tiny_dit(path: Path) -> None:
    """ComfyUI's Hunyuan3D-2 DiT with one block of each kind and random weights (fixed seed)."""
    import comfy.ops
    from comfy.ldm.hunyuan3d.model import Hunyuan3Dv2
    from safetensors.torch import save_file

    dit = Hunyuan3Dv2(in_channels=64, context_in_dim=WIDTH, hidden_size=64, num_heads=16, depth=1,
                      depth_single_blocks=1, operations=comfy.ops.disable_weight_init)
    g = torch.Generator().manual_seed(0)
    save_file({k: 0.2 * torch.randn(v.shape, generator=g) for k, v in dit.state_dict().items()}, str(path))


def node(class_type: str, **inputs: Any) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def graph(*, seeds: tuple[int, ...] = SEEDS, views: bool = True, aggregator: str | None = "multidiffusion",
          options: str = "", cameras: str = "", tokens: tuple[int, ...] | None = None, cfg: float = 3.0,
          batch: int = 1) -> dict:
    """Encodings -> Hunyuan3Dv2Conditioning per image -> [trellis-mv Views] -> KSampler on [a multi-view MODEL]."""
    p = {"model": node("UNETLoader", unet_name=DIT, weight_dtype="default"),
         "latent": node("EmptyLatentHunyuan3Dv2", resolution=LENGTH, batch_size=batch)}
    for i, seed in enumerate(seeds):
        p[f"enc{i}"] = node("TrellisMVTestEncoding", seed=seed, count=(tokens or (TOKENS,) * len(seeds))[i], width=WIDTH)
        p[f"cond{i}"] = node("Hunyuan3Dv2Conditioning", clip_vision_output=[f"enc{i}", 0])
    positive = ["cond0", 0]
    if views:
        p["views"] = node("TrellisMVViews", cameras=cameras, weights="",
                          **{f"view_{i + 1}": [f"cond{i}", 0] for i in range(len(seeds))})
        positive = ["views", 0]
    model = ["model", 0]
    if aggregator is not None:
        p["mv"] = node("TrellisMVMultiView", model=model, aggregator=aggregator, options=options, stage="shape")
        model = ["mv", 0]
    p["sample"] = node("KSampler", model=model, seed=7, steps=3, cfg=cfg, sampler_name="euler", scheduler="normal",
                       positive=positive, negative=["cond0", 1], latent_image=["latent", 0], denoise=1.0)
    p["save"] = node("SaveLatent", samples=["sample", 0], filename_prefix=f"t/{uuid.uuid4().hex}")
    return p


def run(comfy: types.SimpleNamespace, prompt: dict) -> torch.Tensor:
    """The sampled latent, as ComfyUI's SaveLatent wrote it; a failure raises with ComfyUI's own message."""
    from safetensors.torch import load_file

    prompt_id = uuid.uuid4().hex
    valid, error, outputs, node_errors = asyncio.run(comfy.execution.validate_prompt(prompt_id, prompt, None))
    if not valid:
        raise PromptInvalid(f"{error['message']}: {error['details']} {node_errors}")
    comfy.executor.execute(prompt, prompt_id, {}, outputs)
    failures = [data for event, data in comfy.executor.status_messages if event == "execution_error"]
    if failures:
        raise PromptFailed(f"{failures[0]['node_type']}: {failures[0]['exception_type']}: {failures[0]['exception_message']}")
    prefix = prompt["save"]["inputs"]["filename_prefix"]
    (saved,) = (comfy.output / "t").glob(f"{prefix.split('/')[1]}_*.latent")
    return load_file(str(saved))["latent_tensor"]


class PromptInvalid(Exception):
    pass


class PromptFailed(Exception):
    pass


def conditioning(seed: int, count: int = TOKENS) -> tuple[list, list]:
    """The positive and negative of ComfyUI's own Hunyuan3Dv2Conditioning for the stand-in encoding ``seed``."""
    import nodes

    encoding = nodes.NODE_CLASS_MAPPINGS["TrellisMVTestEncoding"]().encode(seed, count, WIDTH)[0]
    return nodes.NODE_CLASS_MAPPINGS["Hunyuan3Dv2Conditioning"]().encode(encoding)


def load_model(comfy: types.SimpleNamespace) -> Any:
    return comfy.nodes.UNETLoader().load_unet(DIT, "default")[0]


def ksampler(comfy: types.SimpleNamespace, model: Any, positive: list, negative: list, cfg: float = 3.0,
             batch: int = 1) -> torch.Tensor:
    latent = {"samples": torch.zeros(batch, 64, LENGTH), "type": "hunyuan3dv2"}
    return comfy.nodes.common_ksampler(model, 7, 3, cfg, "euler", "normal", positive, negative, latent)[0]["samples"]


# -- the node list -----------------------------------------------------------------------------------

def test_the_node_lists_every_registered_aggregator(comfy: types.SimpleNamespace) -> None:
    import trellis_mv

    kind, spec = comfy.nodes.NODE_CLASS_MAPPINGS["TrellisMVMultiView"].INPUT_TYPES()["required"]["aggregator"]
    listed = spec["options"]  # what ComfyUI's /object_info serves the front end
    assert kind == "COMBO"
    registered = trellis_mv.list_aggregators()
    assert len(listed) == len(registered)
    assert {trellis_mv.get_registry().info(name).qualified_name for name in listed} == {i.qualified_name for i in registered}
    # this environment has the checkout's plugins: each shows without any change to the extension
    assert {"multidiffusion", "stochastic", "single", "weighted", "concat", "consensus", "visibility", "robust"} <= set(listed)


def test_comfyui_loaded_the_folder_as_a_custom_node(comfy: types.SimpleNamespace) -> None:
    mapping = comfy.nodes.NODE_CLASS_MAPPINGS
    assert mapping["TrellisMVViews"].RELATIVE_PYTHON_MODULE == f"custom_nodes.{EXTENSION.name}"
    assert comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS["TrellisMVMultiView"] == "trellis-mv Multi-view Model"


def test_the_registry_metadata_parses_with_comfyuis_own_reader(comfy: types.SimpleNamespace) -> None:
    from comfy_config import config_parser

    config = config_parser.extract_node_configuration(str(EXTENSION))
    assert config.project.name == "trellis-mv-nodes" and config.project.version == "0.1.0"
    assert config.project.license.text == "MIT"
    assert config.tool_comfy.publisher_id and config.tool_comfy.display_name and config.tool_comfy.icon


# -- what sampling does ----------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 2])
def test_multidiffusion_is_the_mean_of_the_views_guided_once(comfy: types.SimpleNamespace, batch: int) -> None:
    import comfy.samplers as samplers

    got = run(comfy, graph(aggregator="multidiffusion", batch=batch))
    pairs = [conditioning(seed) for seed in SEEDS]

    def mean_of_views(args: dict) -> list:  # every view alone through ComfyUI's calc_cond_batch, then their mean
        (positive, negative), x, sigma = args["conds"], args["input"], args["sigma"]
        per_view = [samplers.calc_cond_batch(args["model"], [[entry]], x, sigma, args["model_options"])[0]
                    for entry in positive]
        uncond = samplers.calc_cond_batch(args["model"], [negative], x, sigma, args["model_options"])[0]
        return [sum(per_view) / len(per_view), uncond]

    reference = load_model(comfy).clone()
    reference.set_model_sampler_calc_cond_batch_function(mean_of_views)  # ComfyUI's CFG guides the mean once
    want = ksampler(comfy, reference, [entry for positive, _ in pairs for entry in positive], pairs[0][1], batch=batch)
    one_view = ksampler(comfy, load_model(comfy), pairs[0][0], pairs[0][1], batch=batch)
    assert got.shape == (batch, 64, LENGTH)
    # one batched forward of the views against one forward per view: equal to rounding
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (got - one_view).abs().max() > 1e-2  # the views do change the sample


# fusing aggregators evaluate the view and the negative in one forward, as ComfyUI does: the same numbers;
# selecting ones ask for the sampler's result with one view, two forwards of one row: equal to rounding
@pytest.mark.parametrize(("aggregator", "tolerance"), [("multidiffusion", 1e-6), ("weighted", 1e-6), ("consensus", 1e-6),
                                                       ("robust", 1e-6), ("stochastic", 1e-4), ("single", 1e-4)])
def test_one_view_is_comfyuis_unpatched_result(comfy: types.SimpleNamespace, aggregator: str, tolerance: float) -> None:
    plain = run(comfy, graph(seeds=SEEDS[:1], views=False, aggregator=None))
    patched = run(comfy, graph(seeds=SEEDS[:1], aggregator=aggregator))
    torch.testing.assert_close(patched, plain, rtol=tolerance, atol=tolerance)


def test_guidance_one_costs_no_negative_pass(comfy: types.SimpleNamespace) -> None:
    plain = run(comfy, graph(seeds=SEEDS[:1], views=False, aggregator=None, cfg=1.0))
    patched = run(comfy, graph(seeds=SEEDS[:1], aggregator="multidiffusion", cfg=1.0))
    torch.testing.assert_close(patched, plain, rtol=1e-6, atol=1e-6)


def test_stochastic_uses_one_view_per_step(comfy: types.SimpleNamespace) -> None:
    import comfy.patcher_extension as pe

    pairs = [conditioning(seed) for seed in SEEDS]
    views_node = comfy.nodes.NODE_CLASS_MAPPINGS["TrellisMVViews"]
    views = views_node.execute(view_1=pairs[0][0], view_2=pairs[1][0], view_3=pairs[2][0]).result[0]
    patched = comfy.nodes.NODE_CLASS_MAPPINGS["TrellisMVMultiView"].execute(model=load_model(comfy),
                                                                            aggregator="stochastic").result[0]
    seen: list[int] = []

    def record(executor: Any, model: Any, conds: list, *args: Any) -> list:
        seen.extend(int(c[0]["trellis_mv_view"]) for c in conds if c and "trellis_mv_view" in c[0])
        return executor(model, conds, *args)

    patched.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, "record", record)  # inside trellis-mv's wrapper
    ksampler(comfy, patched, views, pairs[0][1])
    assert seen == [0, 1, 2]  # three steps, TRELLIS v1's cycling order


# -- the patch leaves nothing behind ---------------------------------------------------------------

def test_the_patch_is_gone_after_the_model_is_released(comfy: types.SimpleNamespace) -> None:
    model = load_model(comfy)
    before = {kind: dict(keys) for kind, keys in model.wrappers.items()}
    positive, negative = conditioning(SEEDS[0])
    plain = ksampler(comfy, model, positive, negative)
    patched = comfy.nodes.NODE_CLASS_MAPPINGS["TrellisMVMultiView"].execute(model=model, aggregator="single").result[0]
    assert {kind: dict(keys) for kind, keys in model.wrappers.items()} == before  # the input MODEL is untouched
    assert any("trellis_mv" in keys for keys in patched.wrappers.values())
    ksampler(comfy, patched, positive, negative)
    with pytest.raises(ValueError, match="already went through a trellis-mv Multi-view node"):
        comfy.nodes.NODE_CLASS_MAPPINGS["TrellisMVMultiView"].execute(model=patched, aggregator="single")
    released = weakref.ref(patched)
    del patched
    gc.collect()
    assert released() is None
    torch.testing.assert_close(ksampler(comfy, model, positive, negative), plain, rtol=0, atol=0)


def test_a_failing_run_closes_the_patch(comfy: types.SimpleNamespace) -> None:
    with pytest.raises(PromptFailed, match=r"KSampler: \S*AggregatorOptionError: single: option view=5 but only 3 view"):
        run(comfy, graph(aggregator="single", options="view=5"))
    plain = run(comfy, graph(seeds=SEEDS[:1], views=False, aggregator=None))
    torch.testing.assert_close(run(comfy, graph(seeds=SEEDS[:1], aggregator="multidiffusion")), plain, rtol=1e-6, atol=1e-6)


# -- bad inputs give ComfyUI a clear error ----------------------------------------------------------

def test_mismatched_views_are_refused(comfy: types.SimpleNamespace) -> None:
    with pytest.raises(PromptFailed, match=r"TrellisMVViews: ValueError: .*conditioning shapes differ "
                                           r"\(view 1: \(6, 32\), view 2: \(5, 32\)"):
        run(comfy, graph(seeds=SEEDS[:2], tokens=(6, 5)))


def test_an_unknown_aggregator_is_refused_with_the_registered_ones(comfy: types.SimpleNamespace) -> None:
    # this ComfyUI's prompt validation passes V3 combo values through; the node itself refuses the name
    with pytest.raises(PromptFailed, match=r"TrellisMVMultiView: \S*UnknownAggregatorError: unknown aggregator 'nope'; "
                                           r"registered aggregators: .*multidiffusion"):
        run(comfy, graph(aggregator="nope"))


def test_an_unknown_option_names_the_known_ones(comfy: types.SimpleNamespace) -> None:
    with pytest.raises(PromptFailed, match=r"TrellisMVMultiView: .*'stochastic' has no option 'bogus'; its options are: order"):
        run(comfy, graph(aggregator="stochastic", options="bogus=1"))


def test_cameras_must_match_the_views(comfy: types.SimpleNamespace) -> None:
    with pytest.raises(PromptFailed, match="cameras has 2 entries but there are 3 views"):
        run(comfy, graph(cameras="front;back"))
    with pytest.raises(PromptFailed, match="camera 'sideways' is not a camera"):
        run(comfy, graph(cameras="front;sideways;back"))


def test_a_token_level_aggregator_says_it_cannot_run_here(comfy: types.SimpleNamespace) -> None:
    with pytest.raises(PromptFailed, match="'concat' builds its own conditioning tensors, which ComfyUI's conditioning cannot"):
        run(comfy, graph(aggregator="concat"))


# -- TRELLIS.2's conditioning (its nodes are newer than this ComfyUI): tensors shaped as they make them --

def trellis2_conditioning(batch: int, seed: int = 0) -> tuple[list, list]:
    """As ``Trellis2Conditioning`` returns it: DINOv3 tokens at 512 px, the 1024-px tokens as ``embeds``
    (here 9 and 17 tokens of width 8 for 1029 and 4101 of width 1024), zeros as the negative."""
    g = torch.Generator().manual_seed(seed)
    c512, c1024 = torch.randn(batch, 9, 8, generator=g), torch.randn(batch, 17, 8, generator=g)
    return [[c512, {"embeds": c1024}]], [[torch.zeros_like(c512), {"embeds": torch.zeros_like(c1024)}]]


def with_stage_extras(conditioning: list, extras: dict) -> list:
    """What Trellis2ShapeStage / Trellis2TextureStage do: their per-stage constants merged into every entry."""
    return [[cond, {**d, **extras}] for cond, d in conditioning]


def test_trellis2_views_split_a_batch_and_keep_the_stage_constants(comfy: types.SimpleNamespace) -> None:
    views_node = comfy.nodes.NODE_CLASS_MAPPINGS["TrellisMVViews"]
    (batched, _), (single, _) = trellis2_conditioning(2, seed=1), trellis2_conditioning(1, seed=2)
    views = views_node.execute(view_1=batched, view_2=single, cameras="front;back;90").result[0]
    assert [v[1]["trellis_mv_view"] for v in views] == [0, 1, 2]
    torch.testing.assert_close(views[1][0], batched[0][0][1:2])
    torch.testing.assert_close(views[1][1]["embeds"], batched[0][1]["embeds"][1:2])
    coords = torch.tensor([[0, 1, 2, 3], [0, 4, 5, 6]])  # as many voxels as views: shared, never split
    staged = with_stage_extras(views, {"trellis2_coords": coords, "trellis2_generation_mode": "shape_generation"})
    assert all(v[1]["trellis2_coords"] is coords and v[0].shape == (1, 9, 8) for v in staged)


def test_trellis2_views_reach_the_model_whole_with_the_negative_as_uncond(comfy: types.SimpleNamespace) -> None:
    """The wrapper over ComfyUI's calc_cond_batch, fed TRELLIS.2-shaped entries: each view's entry reaches the
    model whole (its embeds and stage constants), the negative in the unconditional slot, and the mean of
    the views comes back for ComfyUI's CFG."""
    mv = next(m for key, m in sys.modules.items() if key.endswith(f"{EXTENSION.name}.multiview"))  # as ComfyUI loaded it
    views = comfy.nodes.NODE_CLASS_MAPPINGS["TrellisMVViews"].execute(view_1=trellis2_conditioning(3)[0]).result[0]
    extras = {"trellis2_coords": torch.zeros(5, 4, dtype=torch.int32), "trellis2_generation_mode": "texture_generation"}
    positive = [{**d, "cross_attn": c, **extras} for c, d in views]
    negative = [{**d, "cross_attn": c, **extras} for c, d in trellis2_conditioning(1)[1]]
    x = torch.randn(1, 32, 5, 1)
    slots: list[list] = []

    def calc_cond_batch(model: Any, conds: list, x_in: torch.Tensor, timestep: torch.Tensor, options: dict) -> list:
        slots.append([None if c is None else ("neg" if not c[0]["cross_attn"].any() else c[0]["trellis_mv_view"]) for c in conds])
        for c in conds:
            assert c is None or (c[0]["embeds"].shape == (1, 17, 8) and c[0]["trellis2_coords"] is extras["trellis2_coords"])
        return [torch.zeros_like(x_in) if c is None else x_in + c[0]["embeds"].mean() for c in conds]

    patch = mv.MultiView("multidiffusion")
    guider = types.SimpleNamespace(conds={"positive": positive, "negative": negative})

    def sampling(guider: Any, sigmas: torch.Tensor) -> list:
        return patch.calc_cond_batch(calc_cond_batch, None, [positive, negative], x, sigmas[:1], {})

    fused, uncond = patch.sampler_sample(sampling, guider, torch.tensor([1.0, 0.0]))
    assert slots == [[0, "neg", 1, 2]]  # one evaluation; the negative in slot 1, ComfyUI's unconditional
    torch.testing.assert_close(fused, x + sum(v[1]["embeds"].mean() for v in views) / 3)
    torch.testing.assert_close(uncond, x)
