"""The dashboard in a real browser: Debian's headless Chromium, driven by Selenium, against a real
``homelab serve`` with fake backends. Screenshots go to ``$HOMELAB_TEST_ARTIFACTS/dashboard`` (or
the test's tmp dir); the page's first-load weight is written beside them as ``weight.json``.

Selenium is always given the system chromedriver and Chromium binary, so its Selenium Manager
never downloads a browser or a driver.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import FAKE, free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT = 20.0

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[test])")
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(f"no headless browser: needs {CHROMIUM} and {CHROMEDRIVER} "
                "(Debian packages chromium and chromium-driver)", allow_module_level=True)

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

MIB = 1 << 20


def write_generation(directory: Path, extra: str = "") -> Path:
    """A config with two fake models that cannot run together, plus the plan and manifest a
    deploy would have put beside it."""
    pa, pb = free_port(), free_port()
    fake = f"{sys.executable} -S {FAKE}"
    config = directory / "config.yaml"
    config.write_text(textwrap.dedent(f"""\
        healthCheckTimeout: 15
        {extra}
        models:
          small:
            cmd: {fake} --port {pa} --name small --load-time 0.4
            proxy: http://127.0.0.1:{pa}
            unloadTimeout: 2
            aliases: [tiny]
            ttl: 600
          big:
            cmd: {fake} --port {pb} --name big --load-time 0.6 --token-rate 40 --tokens 12
            proxy: http://127.0.0.1:{pb}
            unloadTimeout: 2
            filters:
              setParamsByID:
                big-precise: {{temperature: 0.1}}
        """))

    def terms(weights: int, kv: int, compute: int) -> dict[str, int]:
        return {"weights": weights * MIB, "kv": kv * MIB, "compute": compute * MIB, "overhead": 300 * MIB,
                "total": (weights + kv + compute + 300) * MIB}

    (directory / "plan.json").write_text(json.dumps({
        "version": 1, "host": "box", "backend": "vulkan",
        "devices": {"gpu0": {"name": "Radeon RX 7900 XTX", "budget_mib": 23500, "llama_cpp": "Vulkan0"}},
        "models": {"small": {"devices": {"gpu0": terms(5200, 1500, 600)}, "source": "hf://org/small-GGUF@1a2b3c"},
                   "big": {"devices": {"gpu0": terms(14800, 4000, 1200)}, "source": "hf://org/big-GGUF@4d5e6f"}},
    }))
    (directory / "manifest.json").write_text(json.dumps({
        "host": "box", "homelab": "0.1.0", "runtime": "supervisor", "build_number": 7012,
        "server_binary": "/opt/homelab/bin/llama-server",
        "inputs": {"lock": "3c" * 32, "build": "9f" * 32, "patches": {"mtp-fix": "77" * 32}},
        "llama_cpp": {"ref": "b7012", "commit": "c0ffee12" * 5, "backend": "vulkan", "source": "git"},
        "models": {"big": [
            {"role": "model", "source": "hf", "repo": "org/big-GGUF", "revision": "4d5e6f" + "0" * 34,
             "path": "big-Q4_K_M.gguf", "size": 15 << 30, "sha256": "be" * 32},
            {"role": "draft", "source": "hf", "repo": "org/tiny-GGUF", "revision": "1a2b3c" + "0" * 34,
             "path": "tiny-Q8_0.gguf", "size": 600 << 20, "sha256": "d7" * 32}]},
    }))
    (directory / ".homelab-generation.json").write_text(json.dumps({"number": 12, "created": time.time() - 3600,
                                                                    "status": "ok"}))
    return config


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[[Path], str]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: Path) -> str:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "homelab.cli", "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}",
             "--drain-timeout", "2"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return f"http://127.0.0.1:{port}"
            except OSError:
                assert proc.poll() is None, "homelab serve exited"
                time.sleep(0.05)
        raise AssertionError("homelab serve did not start listening")

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--no-first-run", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    root = os.environ.get("HOMELAB_TEST_ARTIFACTS")
    directory = Path(root) / "dashboard" if root else tmp_path / "artifacts"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def until(driver: Any, check: Callable[[Any], Any], what: str) -> Any:
    return WebDriverWait(driver, WAIT, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)).until(
        check, message=f"timed out after {WAIT}s waiting for {what}")


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def state_of(driver: Any, model: str) -> str | None:
    return js(driver, "return document.querySelector(`tr[data-model='${arguments[0]}'] .badge`)?.dataset.state", model)


def click(driver: Any, selector: str) -> None:
    """Click what the selector finds; the table is re-rendered on every status message, so a
    found row may be replaced before the click lands: find it again then."""
    def attempt(d: Any) -> bool:
        d.find_element(By.CSS_SELECTOR, selector).click()
        return True
    until(driver, attempt, f"a clickable {selector}")


def choose(driver: Any, select_id: str, value: str) -> None:
    """Pick an option; the page refills its selects on live messages, so retry a stale one."""
    def attempt(d: Any) -> bool:
        Select(d.find_element(By.ID, select_id)).select_by_value(value)
        return bool(d.find_element(By.ID, select_id).get_attribute("value") == value)
    until(driver, attempt, f"{value} chosen in #{select_id}")


def severe_console(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_dashboard_live_in_a_browser(tmp_path: Path, serve_process, browser, artifacts: Path) -> None:
    url = serve_process(write_generation(tmp_path))
    browser.get(url + "/")  # a browser's visit to / lands on the page
    until(browser, lambda d: d.current_url == url + "/ui/", "the redirect to /ui/")
    until(browser, lambda d: d.find_element(By.ID, "conn").text == "live", "the event stream")
    assert state_of(browser, "small") == "unloaded" and state_of(browser, "big") == "unloaded"
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-model='small']").text
    assert "tiny" in row
    assert "big-precise" in browser.find_element(By.CSS_SELECTOR, "tr[data-model='big']").text

    # page weight on first load (the event stream is still open: it is not part of the weight)
    weight = js(browser, """
        const nav = performance.getEntriesByType('navigation')[0];
        const res = performance.getEntriesByType('resource').filter(r => new URL(r.name).pathname !== '/api/events');
        const all = [nav, ...res];
        return {total: all.reduce((a, e) => a + e.transferSize, 0),
                body: all.reduce((a, e) => a + e.encodedBodySize, 0),
                files: Object.fromEntries(all.map(e => [new URL(e.name).pathname, e.transferSize]))};""")
    (artifacts / "weight.json").write_text(json.dumps(weight, indent=2) + "\n")
    print(f"dashboard first-load weight: {weight}")
    assert set(weight["files"]) == {"/ui/", "/ui/style.css", "/ui/app.js", "/api/state"}
    assert weight["total"] > 0

    # load a model with the button: the state changes live, no reload
    browser.execute_script("window.__same_page = true")
    click(browser, "tr[data-model='small'] button[data-action='load']")
    until(browser, lambda d: state_of(d, "small") in ("loading", "ready"), "small to start loading")
    until(browser, lambda d: state_of(d, "small") == "ready", "small to be ready")
    assert js(browser, "return window.__same_page") is True
    until(browser, lambda d: "unloads in" in d.find_element(By.CSS_SELECTOR, "tr[data-model='small'] .detail").text,
          "the TTL countdown")
    browser.find_element(By.ID, "models").screenshot(str(artifacts / "models.png"))

    # the VRAM picture: small resident; asking about big shows small would be evicted
    assert js(browser, "return document.querySelector(`[data-device='gpu0'] .seg[data-model='small']`) !== null")
    # the plan's gpu0 with the name the config and the supervisor's messages use
    caption = browser.find_element(By.CSS_SELECTOR, "[data-device='gpu0'] figcaption").text
    assert caption.startswith("gpu0 (Vulkan0) · Radeon RX 7900 XTX · ")
    Select(browser.find_element(By.ID, "target")).select_by_value("big")
    until(browser, lambda d: "would evict: small" in d.find_element(By.ID, "evict-note").text, "the eviction preview")
    assert js(browser, "return document.querySelector(`.seg[data-model='small']`).classList.contains('evict')")
    assert js(browser, "return document.querySelector(`.seg[data-model='big']`).classList.contains('incoming')")
    browser.find_element(By.ID, "vram").screenshot(str(artifacts / "vram-preview.png"))

    # the playground streams an answer from big: that swap evicts small
    Select(browser.find_element(By.ID, "playmodel")).select_by_value("big")
    browser.find_element(By.ID, "send").click()
    until(browser, lambda d: "tok/s" in d.find_element(By.ID, "playstats").text, "the playground's stats")
    assert browser.find_element(By.ID, "answer").text.startswith("t0 t1")
    assert "time to first token" in browser.find_element(By.ID, "playstats").text
    until(browser, lambda d: state_of(d, "big") == "ready" and state_of(d, "small") == "unloaded", "the swap")
    Select(browser.find_element(By.ID, "target")).select_by_value("")
    until(browser, lambda d: js(d, "return document.querySelector(`.seg[data-model='small']`) === null"
                                   " && document.querySelector(`.seg[data-model='big']`) !== null"), "the bars to follow")
    browser.find_element(By.ID, "vram").screenshot(str(artifacts / "vram.png"))
    until(browser, lambda d: "evicted small" in d.find_element(By.ID, "timeline").text, "the swap on the timeline")
    timeline = browser.find_element(By.ID, "timeline").text
    assert "load big for request #" in timeline and "load small (load button)" in timeline and "tok/s" in timeline
    assert "big" in browser.find_element(By.ID, "loadtimes").text
    browser.find_element(By.ID, "activity").screenshot(str(artifacts / "timeline.png"))

    # logs stream, per model, with search and pause; the page opens on the supervisor's log and
    # the server sends a backend's lines only while the panel shows them (?logs=)
    assert Select(browser.find_element(By.ID, "logsource")).first_selected_option.get_attribute("value") == "proxy"
    until(browser, lambda d: "starting model big" in d.find_element(By.ID, "logview").text, "the supervisor's log")
    until(browser, lambda d: js(d, "return [...document.getElementById('logsource').options].some(o => o.value === 'big')"),
          "big's log as a source")
    Select(browser.find_element(By.ID, "logsource")).select_by_value("big")
    until(browser, lambda d: "--name big" in d.find_element(By.ID, "logview").text
          and "starting model" not in d.find_element(By.ID, "logview").text, "only big's own log lines")
    Select(browser.find_element(By.ID, "logsource")).select_by_value("")
    search = browser.find_element(By.ID, "logsearch")
    search.send_keys("ready in")
    until(browser, lambda d: all("ready in" in ln for ln in d.find_element(By.ID, "logview").text.splitlines())
          and d.find_element(By.ID, "logview").text, "the search filter")
    search.clear()
    browser.find_element(By.ID, "logpause").click()
    paused = browser.find_element(By.ID, "logview").text
    click(browser, "tr[data-model='small'] button[data-action='load']")
    until(browser, lambda d: state_of(d, "small") == "ready", "small to be ready again")
    assert browser.find_element(By.ID, "logview").text == paused
    browser.find_element(By.ID, "logpause").click()
    until(browser, lambda d: "starting model small" in d.find_element(By.ID, "logview").text.split("starting model big")[-1],
          "the log to resume")

    facts = browser.find_element(By.ID, "facts").text
    for fact in ("12", "7012", "vulkan", "mtp-fix", "3c3c3c", "b7012", "c0ffee12c0ff",
                 "model: org/big-GGUF/big-Q4_K_M.gguf@4d5e6f000000 sha256 bebebebebebe",
                 "draft: org/tiny-GGUF/tiny-Q8_0.gguf@1a2b3c000000 sha256 d7d7d7d7d7d7", "hf://org/small-GGUF@1a2b3c"):
        assert fact in facts
    browser.find_element(By.ID, "deploy").screenshot(str(artifacts / "deploy.png"))

    # readable on a phone: nothing wider than the screen
    browser.set_window_size(390, 844)
    assert js(browser, "return document.documentElement.scrollWidth <= window.innerWidth + 1")
    browser.save_screenshot(str(artifacts / "phone.png"))
    assert severe_console(browser) == []


def test_dashboard_asks_for_the_api_key_once(tmp_path: Path, serve_process, browser, artifacts: Path) -> None:
    url = serve_process(write_generation(tmp_path, extra="apiKeys: [letmein]"))
    browser.get(url + "/ui/")
    until(browser, lambda d: d.find_element(By.ID, "keydialog").get_attribute("open") is not None, "the key dialog")
    browser.find_element(By.ID, "keyinput").send_keys("letmein\n")
    until(browser, lambda d: d.find_element(By.ID, "conn").text == "live", "the event stream with the key")
    assert state_of(browser, "small") == "unloaded"
    browser.refresh()  # kept for the browser session: not asked again
    until(browser, lambda d: d.find_element(By.ID, "conn").text == "live", "the event stream after a reload")
    assert browser.find_element(By.ID, "keydialog").get_attribute("open") is None
    # the 401s before the key was given are the only console errors
    assert all("401" in message for message in severe_console(browser))


def test_dashboard_switches_the_profile(tmp_path: Path, serve_process, browser, artifacts: Path) -> None:
    """The Models section's selectors and profiles; switching the profile in the page routes the
    pinned name to the new target (small and big cannot run together, so the swap shows it)."""
    extra = ("selectors: {pick: {strategy: warm, targets: [small, big]}}\n        "
             "profiles: {fast: {description: the small one, pins: {chat: small}}, quality: {pins: {chat: big}}}")
    url = serve_process(write_generation(tmp_path, extra=extra))
    browser.get(url + "/ui/")
    until(browser, lambda d: d.find_element(By.ID, "conn").text == "live", "the event stream")
    assert browser.find_element(By.ID, "selection").is_displayed()
    pick = browser.find_element(By.CSS_SELECTOR, "tr[data-selector='pick']").text
    assert "warm" in pick and pick.endswith("small")  # nothing warm: the first target
    assert "chat → small" in browser.find_element(By.CSS_SELECTOR, "tr[data-profile='fast']").text
    assert Select(browser.find_element(By.ID, "profile")).first_selected_option.text == "(none)"

    def send(name: str, target: str) -> None:
        until(browser, lambda d: js(d, "return [...document.getElementById('playmodel').options]"
                                       ".some(o => o.value === arguments[0])", name), f"{name} in the playground")
        choose(browser, "playmodel", name)
        browser.find_element(By.ID, "send").click()
        until(browser, lambda d: "tok/s" in d.find_element(By.ID, "playstats").text, f"the answer for {name}")
        until(browser, lambda d: state_of(d, target) == "ready", f"{name} to reach {target}")

    choose(browser, "profile", "quality")
    until(browser, lambda d: "(active)" in d.find_element(By.CSS_SELECTOR, "tr[data-profile='quality']").text,
          "the switch to arrive over the event stream")
    send("chat", "big")
    assert state_of(browser, "small") == "unloaded"
    until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "tr[data-selector='pick'] .picks").text == "big",
          "the warm selector to follow big")
    browser.find_element(By.ID, "models").screenshot(str(artifacts / "profiles.png"))

    choose(browser, "profile", "fast")
    until(browser, lambda d: "(active)" in d.find_element(By.CSS_SELECTOR, "tr[data-profile='fast']").text,
          "the second switch")
    send("chat", "small")
    until(browser, lambda d: state_of(d, "big") == "unloaded", "big evicted for small")
    timeline = browser.find_element(By.ID, "timeline").text
    assert "load big for request #" in timeline and "load small for request #" in timeline
    assert severe_console(browser) == []
