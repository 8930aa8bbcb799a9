"""The panel as a user sees it: the quickstart served by Voila, opened in headless Chromium.

Voila runs the quickstart (without its clean-up cell) in a real kernel and renders its
outputs with the stock ipywidgets front end; Chromium (Debian's ``chromium`` driven by
``chromedriver`` through Selenium, nothing downloaded) loads the page. The test asserts the
tabs, the version rows and their replica states, then runs an RPS sweep by clicking in the
page and waits for the chart image: the full round trip browser -> kernel -> background
thread -> browser. The screenshots become ``docs/img/panel.png`` and ``docs/img/panel-rps.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "notebooks" / "quickstart.ipynb"
IMAGES = ROOT / "docs" / "img"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: Voila executes the whole notebook before it sends the page: cluster, push, load, sweep.
PAGE_TIMEOUT_S = 300
SERVER_START_S = 60

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def panel_notebook(folder: Path) -> Path:
    """The quickstart without its clean-up cells: the stack must outlive the page load."""
    book = nbformat.read(QUICKSTART, as_version=4)
    book.cells = [c for c in book.cells if "cleanup" not in c.metadata.get("tags", [])]
    path = folder / "quickstart_panel.ipynb"
    nbformat.write(book, path)
    return path


def _jupyter_env(home: Path) -> dict[str, str]:
    """Private Jupyter folders; the ``python3`` kernel is this interpreter."""
    data = home / "data"
    spec = data / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
    )
    env = dict(os.environ)
    env.update(
        JUPYTER_DATA_DIR=str(data),
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        MODELREPO_CACHE_DIR=str(home / "cache"),
        PYTHONUNBUFFERED="1",
    )
    return env


def _stop_tree(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Stop Voila (it shuts its kernels down, which stop their Triton and cluster), then make
    sure none of the processes it started survives."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    proc.send_signal(signal.SIGTERM)  # jupyter_server's clean shutdown (kernels included)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=timeout)


@pytest.fixture
def voila(tmp_path: Path) -> Iterator[str]:
    """Voila serving the panel notebook on a free loopback port; yields the page URL."""
    notebook = panel_notebook(tmp_path)
    port = _free_port()
    log = (tmp_path / "voila.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voila",
            str(notebook),
            "--no-browser",
            f"--port={port}",
            "--Voila.ip=127.0.0.1",
            "--show_tracebacks=True",
            f"--VoilaExecutor.timeout={PAGE_TIMEOUT_S}",
        ],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        env=_jupyter_env(tmp_path / "jupyter"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    page = f"http://127.0.0.1:{port}/"  # Voila given one notebook serves it at its root
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert proc.poll() is None, (tmp_path / "voila.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break  # listening (a GET would already execute the notebook)
            assert time.monotonic() < deadline, (
                "Voila did not start:\n" + (tmp_path / "voila.log").read_text()
            )
            time.sleep(0.2)
        yield page
    finally:
        _stop_tree(proc)
        log.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """Headless Debian Chromium through chromedriver; no network beyond loopback."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:  # a failure, not a skip: CI must not pass without looking at the page
        pytest.fail(
            f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
            "(bash scripts/setup.sh does)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--disable-quic",
        "--window-size=1300,1000",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S + 60)
    try:
        yield driver
    finally:
        driver.quit()


def test_panel_renders_and_runs_in_a_real_browser(voila: str, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(voila)
    wait = WebDriverWait(driver, 120)
    panel = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".modelrepo-panel")))

    # the tabs
    tabs = panel.find_elements(By.CSS_SELECTOR, ".lm-TabBar-tab")
    assert [t.text.strip() for t in tabs] == ["Models", "Push", "RPS"]

    # the version row with a READY state on each of the two replicas (after the refresh)
    row_css = '.modelrepo-panel tr.modelrepo-version-row[data-model="add_one"]'
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, row_css))
    rows = driver.find_elements(By.CSS_SELECTOR, row_css)
    assert [r.get_attribute("data-version") for r in rows] == ["1"]
    states = rows[0].find_elements(By.CSS_SELECTOR, ".modelrepo-state")
    assert [s.text for s in states] == ["READY", "READY"]
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", panel)
    time.sleep(0.5)  # let the layout settle before the picture
    IMAGES.mkdir(parents=True, exist_ok=True)
    panel.screenshot(str(IMAGES / "panel.png"))

    # the RPS tab: type a short sweep, press Run, wait for the chart and the table
    tabs[2].click()
    inputs = {
        el.find_element(By.CSS_SELECTOR, "label").text.strip(): el.find_element(
            By.CSS_SELECTOR, "input"
        )
        for el in panel.find_elements(By.CSS_SELECTOR, ".widget-text")
        if el.is_displayed() and el.find_elements(By.CSS_SELECTOR, "label")
    }
    for label, value in (("levels", "1, 4, 16"), ("duration s", "1.5"), ("warm-up s", "0.3")):
        box = inputs[label]
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.TAB)
    run = next(
        b
        for b in panel.find_elements(By.CSS_SELECTOR, "button.jupyter-button")
        if b.is_displayed() and b.text.strip() == "Run"
    )
    run.click()
    long_wait = WebDriverWait(driver, 180)
    chart_css = ".modelrepo-panel .jp-OutputArea-output img"
    long_wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, chart_css))
    long_wait.until(
        lambda d: "Measured 3 step(s)" in d.find_element(By.CSS_SELECTOR, ".modelrepo-panel").text
    )
    chart = driver.find_element(By.CSS_SELECTOR, chart_css)
    assert chart.get_attribute("src").startswith("data:image/png;base64,")
    assert chart.size["width"] > 400
    text = panel.text
    for load in ("c=1", "c=4", "c=16"):
        assert load in text
    assert not driver.find_elements(By.CSS_SELECTOR, ".modelrepo-panel .modelrepo-error")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", panel)
    time.sleep(0.5)
    panel.screenshot(str(IMAGES / "panel-rps.png"))
