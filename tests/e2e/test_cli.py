"""The command line as a user runs it: exit codes, messages, side-by-side output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def run(args, env_extra=None, timeout=600):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "qtui", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_chat_side_by_side_json(real_cache, tmp_path):
    env = {"QTUI_HOME": str(tmp_path), "QTUI_CACHE_DIR": str(real_cache)}
    done = run(
        [
            "chat",
            "default",
            "default:int4",
            "--prompt",
            "What is the capital of France?",
            "--max-tokens",
            "40",
            "--json",
        ],
        env,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["variant"] for r in rows] == ["bf16", "int4-g64-rtn"]
    assert all("Paris" in r["text"] for r in rows)
    assert rows[1]["backend"].startswith("int4pack") and rows[1]["decode_tok_s"] > 0
    listed = run(["variants"], env)
    assert listed.returncode == 0 and "int4-g64-rtn" in listed.stdout


def test_errors_are_one_line_and_nonzero(tmp_path):
    env = {"QTUI_HOME": str(tmp_path)}
    missing = run(["quantize", str(tmp_path / "nope"), "--format", "int4"], env)
    assert missing.returncode == 1
    assert "no such file or folder" in missing.stderr and "Traceback" not in missing.stderr
    bad_format = run(["quantize", "default", "--format", "int5"], env)
    assert bad_format.returncode == 1 and "unknown format" in bad_format.stderr
    bad_group = run(["quantize", "default", "--format", "int4", "--group-size", "100"], env)
    assert bad_group.returncode == 1 and "group size 100" in bad_group.stderr
    usage = run(["chat", "default"], env)
    assert usage.returncode == 2
