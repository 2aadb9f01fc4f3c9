"""Take the docs' picture of the example workflow in ComfyUI's own front end (headless chromium).

    python tools/screenshot.py OUT.png --python COMFYUI_PYTHON [--comfyui DIR]

COMFYUI_PYTHON is a Python with ComfyUI's requirements, ``comfyui-frontend-package`` and trellis-mv;
this script (run with Playwright installed) starts ``main.py --cpu`` on 127.0.0.1 with this folder
linked into a fresh ``custom_nodes``, loads ``example_workflows/trellis2_multiview.json`` into the
canvas and saves a screenshot. Nodes that this ComfyUI lacks are drawn as missing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

EXTENSION = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--python", required=True, help="the Python that runs ComfyUI")
    parser.add_argument("--comfyui", type=Path, default=EXTENSION.parents[2] / "shared" / "upstream" / "ComfyUI")
    parser.add_argument("--stand-ins", action="store_true", help="put the tests' torchvision stand-in on the path")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "custom_nodes").mkdir()
        (base / "custom_nodes" / EXTENSION.name).symlink_to(EXTENSION, target_is_directory=True)
        port = free_port()
        env = dict(os.environ)
        if args.stand_ins:
            env["PYTHONPATH"] = str(EXTENSION / "tests" / "comfyui" / "stand_ins")
        server = subprocess.Popen(
            [args.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
             "--disable-auto-launch"], cwd=args.comfyui, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(240):
                try:
                    with urllib.request.urlopen(f"{url}/object_info/TrellisMVMultiView", timeout=2) as r:
                        json.load(r)
                    break
                except OSError:
                    time.sleep(0.5)
            else:
                raise SystemExit("ComfyUI did not start")
            workflow = json.loads((EXTENSION / "example_workflows" / "trellis2_multiview.json").read_text())
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 2250, "height": 920})
                page.goto(url)
                page.wait_for_function("window.app && window.app.graph", timeout=120_000)
                page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
                page.wait_for_timeout(2000)
                page.keyboard.press("Escape")  # the missing-nodes dialog, where there is one
                page.evaluate("""() => { for (const d of document.querySelectorAll('.p-dialog-mask, .comfy-modal'))
                                         d.remove(); }""")
                # a zoom at which the canvas draws titles and widgets, the whole graph in view
                page.evaluate("""() => { const c = window.app.canvas; c.ds.scale = 0.68; c.ds.offset = [10, 20];
                                         c.setDirty(true, true); }""")
                page.wait_for_timeout(1000)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out))
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
