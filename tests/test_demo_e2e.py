"""End to end in a real headless browser: start ``demo/app.py`` on localhost with the tiny demo model, submit
a question with an image, and check the page shows the step-entropy chart and the highlighted EchoClip.

Needs Debian's chromium (``apt-get install chromium``; ``.ci/run`` installs it) and the python ``playwright``
package; it never downloads a browser. Set ``ECHOVL_DEMO_SCREENSHOT=docs/screenshot.png`` to also write the
README's screenshot.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from echovl.demo.examples import EXAMPLE_PROBLEMS
from echovl.testing import tiny_image
from tests.demo_support import demo_model_once

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
playwright = pytest.importorskip("playwright.sync_api", reason="the python playwright package is not installed")
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"no chromium at {CHROMIUM}: install Debian's chromium (apt-get install -y chromium), as .ci/run does",
)


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory):
    return demo_model_once(tmp_path_factory)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(demo_model, tmp_path_factory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("demo_app") / "app.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "ECHOVL_CACHE_DIR": str(log_path.parent / "cache"),
    }
    command = [sys.executable, "demo/app.py", "--model", str(demo_model), "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer on {url} within 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def page():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def _save_docs_screenshot(page, path: str) -> None:
    """The top of the live tab after a run, palette-quantised to keep the PNG small."""
    from PIL import Image

    target = Path(path)
    if not target.is_absolute():
        target = ROOT / target
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = target.with_suffix(".raw.png")
    page.screenshot(path=str(raw), full_page=True, clip={"x": 0, "y": 0, "width": 1400, "height": 1330})
    image = Image.open(raw).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(target, optimize=True)
    raw.unlink()


def test_live_and_traces_tabs_in_a_browser(app_url, page, tmp_path):
    problem = EXAMPLE_PROBLEMS[0]
    image_path = tmp_path / "diagram.png"
    tiny_image(problem.image_seed).save(image_path)

    page.goto(app_url)
    page.wait_for_selector("#live-question textarea", timeout=60_000)
    page.set_input_files("#live-image input[type=file]", str(image_path))
    page.wait_for_selector("#live-image img", timeout=30_000)  # uploaded and previewed
    page.fill("#live-question textarea", problem.question)
    page.fill("#live-answer textarea", problem.answer)
    page.click("#live-run")
    page.wait_for_selector("#live-chart svg.echo-chart", timeout=120_000)

    summary = page.locator("#live-summary .echo-summary").inner_text()
    assert "image: 84×84 px" in summary  # the uploaded image reached the model
    assert page.locator("#live-chart .echo-series").count() == 6
    ring = page.locator("#live-chart .echo-chosen-step")
    assert ring.count() == 1 and "EchoClip: rollout" in ring.text_content()
    chosen = page.locator("#live-rollouts .echo-rollout.echo-chosen")
    assert chosen.count() == 1 and "✓ verified" in chosen.inner_text()
    clip = chosen.locator(".echo-clip")
    assert clip.is_visible() and clip.inner_text().startswith("<think>")
    assert clip.evaluate("e => getComputedStyle(e).outlineStyle") == "solid"  # the page's CSS is applied
    assert ring.get_attribute("data-rollout") == chosen.get_attribute("data-rollout")
    page.screenshot(path=str(tmp_path / "live.png"), full_page=True)
    if os.environ.get("ECHOVL_DEMO_SCREENSHOT"):
        _save_docs_screenshot(page, os.environ["ECHOVL_DEMO_SCREENSHOT"])

    # the traces tab opened the shipped example on start
    page.get_by_role("tab", name="Training traces").click()
    page.wait_for_selector("#traces-chart svg.echo-chart", timeout=30_000)
    assert "problem-0" in page.locator("#traces-summary").inner_text()
    assert page.locator("#traces-rollouts .echo-clip").count() >= 1
    page.screenshot(path=str(tmp_path / "traces.png"), full_page=True)

    # a bad input gives a message in the page
    page.get_by_role("tab", name="Live").click()
    page.fill("#live-question textarea", "")
    page.click("#live-run")
    page.wait_for_selector("#live-summary .echo-error", timeout=30_000)
    assert "the question is empty" in page.locator("#live-summary .echo-error").inner_text()
