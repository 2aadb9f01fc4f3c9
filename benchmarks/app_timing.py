"""How long the web app takes to start, and a proxy run in it, through a real browser.

Starts ``trellis-mv app`` in a subprocess (proxy model) and times it from launch to the first
served page; then a headless Chromium uploads the four example photos and presses Run with
the default steps (12 a stage), timed from the click to "Done" in the page. The same run
without the app (``trellis_mv.generate`` in a worker thread of this process) is timed between the page's runs, with
the page closed (its 3D viewer draws in software on the same cores), so the app's own cost
shows as a difference measured side by side:

    python benchmarks/app_timing.py [--repeats 3] [--out benchmarks/results/app_timing_cpu.txt]

Needs the ``app`` extra, playwright and Debian's ``chromium``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from playwright.sync_api import sync_playwright

import trellis_mv
from trellis_mv import proxy


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, log: Path) -> tuple[subprocess.Popen, float]:
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trellis_mv.cli", "app", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return proc, time.perf_counter() - start
        except OSError:
            time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the report to this file")
    args = ap.parse_args()
    photos = [str(p) for p in proxy.example_images()]
    work = Path(tempfile.mkdtemp())
    port = _port()
    proc, startup = start_app(port, work / "app.log")
    page_runs, direct_runs, reported = [], [], []
    pipe = proxy.ProxyPipeline()
    pool = ThreadPoolExecutor(1)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(120_000)
            for k in range(args.repeats):
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector("#run")
                page.locator("#photos input[type=file]").set_input_files(photos)
                for f in photos:
                    page.wait_for_selector(f"#photos td.filename[aria-label='{Path(f).name}']")
                t = time.perf_counter()
                page.click("#run")
                page.wait_for_function(f"document.querySelector('#status').innerText.startsWith('Done (run {k + 1})')")
                page_runs.append(time.perf_counter() - t)
                reported.append(float(page.inner_text("#status").split(",")[1].split("s")[0]))
                page.goto("about:blank")  # the 3D viewer draws in software on the same cores: stop it first
                t = time.perf_counter()  # in a worker thread, as the server runs it (torch's threading differs)
                pool.submit(trellis_mv.generate, pipe, photos, work / f"direct{k}").result()
                direct_runs.append(time.perf_counter() - t)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    lines = [
        f"trellis-mv app timing, proxy model, 4 example photos, default steps (12 a stage), multidiffusion; "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"{args.repeats} runs each, median",
        f"start: launch to first page served: {startup:.2f} s",
        f"run in the page, click to 'Done': {med(page_runs):.2f} s (runs: {', '.join(f'{x:.2f}' for x in page_runs)})",
        f"  of which the server's own total: {med(reported):.2f} s",
        f"same run without the app (trellis_mv.generate in a worker thread, interleaved): {med(direct_runs):.2f} s "
        f"(runs: {', '.join(f'{x:.2f}' for x in direct_runs)})",
        f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (the machine may be shared)",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
