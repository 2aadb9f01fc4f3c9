"""The ComfyUI extension against a real ComfyUI, run in ComfyUI's own environment.

ComfyUI's torch stack does not import cleanly into this test environment, so the checks
(``comfyui/check_comfyui.py``) run in a subprocess, in a virtualenv layered on this one: it sees
this environment's packages (torch, the checkout's trellis-mv and its plugins) and adds what
ComfyUI needs on top. It is built once and reused while its inputs stay the same.

``COMFYUI_SRC``: the ComfyUI folder (default ``../shared/upstream/ComfyUI`` beside the checkout).
``TRELLIS_MV_COMFYUI_VENV``: where that environment lives (default ``.venv-comfyui`` in the checkout).
Without a ComfyUI these tests skip, and fail where ``TRELLIS_MV_REQUIRE_UPSTREAM=1`` (CI).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

EXTENSION = Path(__file__).resolve().parents[1]
ROOT = EXTENSION.parents[1]
CHECKS = EXTENSION / "tests" / "comfyui"
# Not installed into ComfyUI's environment: torch comes from this one (PyPI's torchvision and torchaudio
# are built for CUDA torch only; a stand-in torchvision covers ComfyUI's import-time use), the web front
# end is not needed to run prompts, and kornia / spandrel serve only comfy_extras nodes the checks do not load.
SKIPPED = re.compile(r"^(torch|torchvision|torchaudio|comfyui-frontend-package|comfyui-workflow-templates|"
                     r"comfyui-embedded-docs|kornia|spandrel)\b")


def comfyui_source() -> Path:
    folder = Path(os.environ.get("COMFYUI_SRC") or ROOT.parent / "shared" / "upstream" / "ComfyUI").resolve()
    if not (folder / "comfy" / "samplers.py").is_file():
        message = f"ComfyUI source not found at {folder}; set COMFYUI_SRC to an unmodified ComfyUI checkout"
        if os.environ.get("TRELLIS_MV_REQUIRE_UPSTREAM", "") not in ("", "0"):
            pytest.fail(message + " (TRELLIS_MV_REQUIRE_UPSTREAM is set: these tests must run)")
        pytest.skip(message)
    return folder


def comfyui_requirements(source: Path) -> list[str]:
    lines = (source / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#") and not SKIPPED.match(line.strip())]


def comfyui_python(source: Path) -> Path:
    """ComfyUI's environment, layered on this one; built when missing or when its inputs changed."""
    import torch

    venv = Path(os.environ.get("TRELLIS_MV_COMFYUI_VENV") or ROOT / ".venv-comfyui")
    python = venv / "bin" / "python"
    base = sysconfig.get_paths()["purelib"]
    requirements = comfyui_requirements(source)
    key = hashlib.sha256(json.dumps([base, torch.__version__, requirements]).encode()).hexdigest()
    stamp = venv / "trellis-mv-comfyui.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key and python.is_file():
        return python
    start = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "trellis_mv_layer.pth").write_text(f"import site; site.addsitedir({base!r})\n")
    constraints = venv / "constraints.txt"
    constraints.write_text(f"torch=={torch.__version__}\n")  # never another torch (PyPI's is a CUDA build)
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(constraints),
                    *requirements], check=True)
    stamp.write_text(json.dumps({"key": key, "install_seconds": round(time.monotonic() - start, 1)}))
    return python


def test_the_extension_in_comfyui() -> None:
    source = comfyui_source()
    python = comfyui_python(source)
    env = {**os.environ, "COMFYUI_SRC": str(source), "PYTHONPATH": str(CHECKS / "stand_ins")}
    done = subprocess.run([python, "-m", "pytest", "-c", str(CHECKS / "pytest.ini"), "-q", str(CHECKS / "check_comfyui.py")],
                          cwd=CHECKS, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"the checks inside ComfyUI failed:\n{done.stdout[-12000:]}\n{done.stderr[-4000:]}"
    assert re.search(r"\b\d+ passed\b", done.stdout) and " skipped" not in done.stdout, done.stdout[-2000:]


def test_the_folder_is_described_for_the_comfy_registry() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    meta = tomllib.loads((EXTENSION / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", project["name"]) and "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]) and project["description"] and project["license"] == {"text": "MIT"}
    assert comfy["PublisherId"] and comfy["DisplayName"] and (EXTENSION / comfy["Icon"]).is_file()
    assert "build-system" not in meta  # a custom node folder, not a distribution: `make setup` and the wheels skip it


def test_the_example_workflow_is_a_connected_graph() -> None:
    """Every link joins two nodes of the graph and is listed on both ends; our nodes carry their widgets."""
    workflow = json.loads((EXTENSION / "example_workflows" / "trellis2_multiview.json").read_text())
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link_id, source, slot, target, target_slot, _type in workflow["links"]:
        assert link_id in (nodes[source]["outputs"][slot].get("links") or [])
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
    types = {n["type"] for n in nodes.values()}
    assert {"TrellisMVViews", "TrellisMVMultiView", "Trellis2Conditioning", "Trellis2ShapeStage", "Trellis2TextureStage",
            "VaeDecodeShapeTrellis", "KSampler"} <= types
    models = [n for n in nodes.values() if n["type"] == "TrellisMVMultiView"]
    assert len(models) == 3 and all(n["widgets_values"][0] for n in models)  # one aggregator per stage
