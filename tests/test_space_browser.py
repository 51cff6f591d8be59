"""The Space in a real headless browser: Debian's chromium driven by Playwright.

The app runs in a subprocess, served on a free localhost port: with tiny offline models
(``--tiny``), and on a small finished toy demo run with the shipped prior (``--run_dir``). The test uploads an image, picks the classes, presses the button and
checks that the mask, the edit and the heatmap render and that the verdict shown follows
the psi and rho shown. Playwright uses the system chromium (no browser download).

``DBB_UPDATE_SCREENSHOT=1`` also writes the page to docs/space-screenshot.png (the
README's picture). Without /usr/bin/chromium the test is skipped, except under CI
(``CI`` set), where it fails: CI installs chromium with .ci/install-browser.sh.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dbb_hf.data.toy import ToyConfig, load_toy

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "space" / "app.py"
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = ROOT / "docs" / "space-screenshot.png"
START_TIMEOUT_S = 120
EDIT_TIMEOUT_MS = 60_000
# Without the background-networking flags chromium stalls on a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium():
    if os.path.exists(CHROMIUM):
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing; CI must install it first (.ci/install-browser.sh)")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium, or run .ci/install-browser.sh)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the Space exited with code {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"the Space did not answer on {url} within {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def serve(folder: Path, mode: list[str]):
    """The Space in a subprocess with the flags ``mode``: yields its URL, stops it after."""
    log = folder / "server.log"
    port = free_port()
    command = [sys.executable, str(APP), *mode, "--server_name", "127.0.0.1", "--server_port", str(port)]
    environ = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=output, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def space_url(tmp_path_factory):
    require_chromium()
    folder = tmp_path_factory.mktemp("space")
    yield from serve(folder, ["--tiny", "--tiny_dir", str(folder / "tiny")])


@pytest.fixture(scope="module")
def run_space_url(tmp_path_factory):
    """The Space on a small toy demo run made here with the shipped prior (``--run_dir``)."""
    require_chromium()
    from dbb_hf.cli import main as dbb_hf_main
    from small_demo import SMALL

    folder = tmp_path_factory.mktemp("space-run")
    assert dbb_hf_main(["demo", "--generator", "diffusion", "--output_dir", str(folder / "run"), *SMALL]) == 0
    yield from serve(folder, ["--run_dir", str(folder / "run")])


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        # Only the app itself: a font or script from the internet would stall the page here.
        context.route(
            "**/*",
            lambda route: route.continue_() if route.request.url.startswith("http://127.0.0.1") else route.abort(),
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def number(text: str, pattern: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in the verdict:\n{text}"
    return float(match.group(1))


def edit_in_browser(page, url: str, upload: Path) -> str:
    """Upload ``upload`` (a horizontal bar), make it a vertical bar, check the three pictures
    and that the verdict shown follows the psi and rho shown; the verdict's text."""
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(url, wait_until="domcontentloaded")
    page.locator("#input-image input[type=file]").set_input_files(str(upload))
    page.locator("#input-image img").first.wait_for(state="visible")
    page.locator("#source-class").get_by_label("horizontal_bar", exact=True).check()
    page.locator("#target-class").get_by_label("vertical_bar", exact=True).check()
    page.locator("#run-edit").click()
    page.locator("#verdict").get_by_text("Verdict:").wait_for(timeout=EDIT_TIMEOUT_MS)

    for element in ("mask-output", "edit-output", "heatmap-output"):
        image = page.locator(f"#{element} img").first
        image.wait_for(state="visible", timeout=10_000)  # sent with the verdict, already shown
        box = image.bounding_box()
        assert box["width"] > 0 and box["height"] > 0, element
        natural = image.evaluate("img => img.complete ? [img.naturalWidth, img.naturalHeight] : [0, 0]")
        assert natural[0] > 0 and natural[1] > 0, f"{element} did not load its picture"

    text = page.locator("#verdict").inner_text()
    assert "horizontal_bar" in text and "vertical_bar" in text
    psi, Psi = number(text, r"psi\s+([-\d.]+)"), number(text, r"Psi = ([-\d.]+)")
    rho, P = number(text, r"rho\s+([-\d.]+)"), number(text, r"P = ([-\d.]+)")
    psi_ok, rho_ok = "psi < Psi ✓" in text, "rho > P ✓" in text
    # The marks are computed from unrounded scores; the 4-digit numbers agree wherever they differ.
    assert psi_ok == (psi < Psi) or psi == Psi, text
    assert rho_ok == (rho > P) or rho == P, text
    verdict = re.search(r"Verdict: (keep|prune)", text).group(1)
    assert (verdict == "keep") == (psi_ok and rho_ok), text
    assert errors == []
    return text


def toy_upload(folder: Path, size: int) -> Path:
    toy = load_toy(ToyConfig(num_train=4, num_validation=4, num_test=8, image_size=size, seed=3))["test"]
    upload = folder / "horizontal.png"
    next(row["image"] for row in toy if row["label"] == 0).save(upload)
    return upload


def test_space_run_folder_mode_edits_with_the_runs_models_in_a_browser(run_space_url, page, tmp_path):
    text = edit_in_browser(page, run_space_url, toy_upload(tmp_path, 32))
    # The run's learned token, its P of 4 for the toy (demo_diffusion.yaml) and its notice.
    assert "a photo of a <dbb-vertical_bar> bar" in text and "P = 4.0000" in text, text
    notice = page.locator("#run-notice")
    assert notice.is_visible() and "<dbb-vertical_bar>" in notice.inner_text()
    assert page.locator("#tiny-notice").count() == 0


def test_space_edits_an_uploaded_image_in_a_browser(space_url, page, tmp_path):
    text = edit_in_browser(page, space_url, toy_upload(tmp_path, 64))
    assert "A photo of a vertical bar" in text, text
    assert page.locator("#tiny-notice").is_visible()

    shot = tmp_path / "space.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("DBB_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
