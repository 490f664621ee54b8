"""``qtui serve``: a port in use is one line; the app served by textual-serve, driven by headless
Chromium (Debian's ``chromium`` through the ``playwright`` package): the page loads, a prompt typed
in the page streams into two columns (fake engine), and a screenshot is kept."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qtui.cli import main

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("QTUI_TEST_ARTIFACTS", ROOT / "test-artifacts"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_port_in_use_is_one_line(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"qtui: error: port {port} on 127.0.0.1 is already in use; pick another with --port"


def test_binding_elsewhere_warns(monkeypatch, capsys):
    import textual_serve.server

    served = []
    monkeypatch.setattr(textual_serve.server.Server, "serve", lambda self, debug=False: served.append(self))
    assert main(["serve", "--host", "0.0.0.0", "--port", str(free_port())]) == 0
    err = capsys.readouterr().err
    assert "warning: serving on 0.0.0.0" in err and "no login" in err
    assert served and served[0].command.endswith("-m qtui app")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"qtui serve exited: {proc.stderr.read() if proc.stderr else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError("qtui serve did not open its port")


@pytest.mark.timeout(300)
def test_browser_types_a_prompt_and_two_columns_answer(tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    port = free_port()
    home = tmp_path / "home"
    env = {**os.environ, "QTUI_HOME": str(home), "PYTHONPATH": str(ROOT)}
    command = f"{sys.executable} {ROOT / 'tests/ui/serve_fake_app.py'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qtui", "serve", "--port", str(port), "--app-command", command],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_port(port, proc)
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"http://127.0.0.1:{port}", wait_until="load")
            page.wait_for_selector("canvas, .xterm", timeout=60_000)
            exports = home / "data" / "exports"
            deadline = time.monotonic() + 120
            answered = None
            while time.monotonic() < deadline and answered is None:
                time.sleep(5)  # the app loads bf16, quantizes int4-g64 (fake) and opens Chat
                page.focus("textarea")  # xterm.js takes keys through its helper textarea
                page.keyboard.type("What is the capital of France?", delay=10)
                page.keyboard.press("Enter")
                time.sleep(3)
                page.keyboard.press("Control+e")  # export: what every column holds, as JSON
                time.sleep(1.5)
                for path in sorted(exports.glob("chat-*.json")) if exports.exists() else []:
                    data = json.loads(path.read_text())
                    if len(data) == 2 and all(len(c["messages"]) >= 2 for c in data):
                        answered = data
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "serve-two-columns.png"
            page.screenshot(path=str(shot))
            browser.close()
        assert answered is not None, "no two-column answer was exported from the page"
        assert [c["variant"] for c in answered] == ["bf16", "int4-g64-rtn"]
        assert "Paris" in answered[0]["messages"][-1]["content"]
        assert "Paris" in answered[1]["messages"][-1]["content"]
        assert shot.stat().st_size > 10_000
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
