"""End to end in a real headless browser: start ``demo/app.py`` on localhost with the tiny demo model, submit
a question with an image, and check the page shows the step-entropy chart and the highlighted EchoClip; open the
overview tab on a run folder built here and check its charts, its link to the traces tab, an A/B of two folders
and a bad folder.

Needs Debian's chromium (``apt-get install chromium``; ``.ci/run`` installs it) and the python ``playwright``
package; it never downloads a browser. Set ``ECHOVL_DEMO_SCREENSHOT=docs/screenshot.png`` to also write the
README's screenshot of the live tab, ``ECHOVL_OVERVIEW_SCREENSHOT=docs/overview.png`` for the overview tab on the
shipped example run.
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
from tests.demo_support import demo_model_once, write_cpu_run, write_easyr1_log

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
def run_folder(tmp_path_factory):
    """A CPU-experiment output (baseline and echo, 6 steps, traces at steps 1 and 2), opened at start."""
    return write_cpu_run(tmp_path_factory.mktemp("runs") / "tiny_cpu_echo")


@pytest.fixture(scope="module")
def app_url(demo_model, run_folder, tmp_path_factory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("demo_app") / "app.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "ECHOVL_CACHE_DIR": str(log_path.parent / "cache"),
    }
    command = [sys.executable, "demo/app.py", "--model", str(demo_model), "--run", str(run_folder)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
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


def _save_docs_screenshot(page, path: str, height: int = 1330) -> None:
    """The top of the page, palette-quantised to keep the PNG small."""
    from PIL import Image

    target = Path(path)
    if not target.is_absolute():
        target = ROOT / target
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = target.with_suffix(".raw.png")
    page.screenshot(path=str(raw), full_page=True, clip={"x": 0, "y": 0, "width": 1400, "height": height})
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


def _fill(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id}").locator("textarea, input").first.fill(text)


def test_overview_tab_in_a_browser(app_url, run_folder, page, tmp_path):
    page.goto(app_url)
    page.get_by_role("tab", name="Training overview").click()
    page.wait_for_selector("#overview-charts .echo-overview-chart svg", timeout=60_000)  # opened at start (--run)
    charts = page.locator("#overview-charts .echo-overview-chart")
    names = [charts.nth(i).get_attribute("data-chart") for i in range(charts.count())]
    assert names[:5] == ["degenerate_groups", "accuracy", "clip_step_entropy", "clip_length", "echo_loss"]
    degenerate = page.locator('#overview-charts [data-chart="degenerate_groups"] .echo-run-series')
    assert [degenerate.nth(i).get_attribute("data-run") for i in range(2)] == ["baseline", "echo"]  # A/B, one chart
    assert degenerate.first.locator("circle").count() == 6  # one point per step
    assert page.locator('#overview-charts [data-chart="echo_loss"] .echo-run-series').count() == 1
    assert "metrics.csv" in page.locator("#overview-summary").inner_text()
    assert page.locator("#overview-charts svg").first.is_visible()
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

    # a traced step opens the traces tab at that step
    page.locator("#overview-trace-step").locator("input").first.click()
    page.get_by_role("option", name="step 2").click()
    page.click("#overview-show-traces")
    page.wait_for_function(
        "() => { const box = document.querySelector('#traces-step input'); return box && box.value === 'step 2'; }",
        timeout=30_000,
    )
    page.wait_for_selector("#traces-chart svg.echo-chart", timeout=30_000)
    assert page.locator("#traces-chart").is_visible()  # the traces tab is the one shown
    assert page.locator("#traces-folder").locator("textarea, input").first.input_value() == str(run_folder / "traces")
    assert "training step2" in page.locator("#traces-summary .echo-stats").text_content()  # label, then value

    # an A/B of two EasyR1 runs, typed in
    a, b = write_easyr1_log(tmp_path / "grpo").parent, write_easyr1_log(tmp_path / "grpo_echo").parent
    page.get_by_role("tab", name="Training overview").click()
    _fill(page, "overview-run", str(a))
    _fill(page, "overview-run-b", str(b))
    page.click("#overview-open")
    page.wait_for_selector('#overview-charts .echo-run-series[data-run="grpo_echo"]', timeout=30_000)
    accuracy = page.locator('#overview-charts [data-chart="accuracy"] .echo-run-series')
    assert [accuracy.nth(i).get_attribute("data-run") for i in range(accuracy.count())] == ["grpo", "grpo_echo"]

    # a folder without a log: a message in the page
    _fill(page, "overview-run", str(tmp_path / "nowhere"))
    _fill(page, "overview-run-b", "")
    page.click("#overview-open")
    page.wait_for_selector("#overview-summary .echo-error", timeout=30_000)
    assert "nowhere: no such file or folder" in page.locator("#overview-summary .echo-error").inner_text()
    assert page.locator("#overview-charts .echo-overview-chart").count() == 0

    if os.environ.get("ECHOVL_OVERVIEW_SCREENSHOT"):  # the shipped example run, as the app opens it by default
        _fill(page, "overview-run", str(ROOT / "demo" / "example_run"))
        page.click("#overview-open")
        page.wait_for_selector("#overview-charts .echo-overview-chart svg", timeout=30_000)
        _save_docs_screenshot(page, os.environ["ECHOVL_OVERVIEW_SCREENSHOT"], height=1250)
