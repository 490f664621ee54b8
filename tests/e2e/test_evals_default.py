"""Evaluation on the real default model: knowledge shows in loglik, the CLI table, the cache, fidelity."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.evals import api
from engine.evals.data import SHARED_SAMPLES
from engine.runtime import variant_from_model

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bf16(default_loaded):
    """The bf16 variant's weights, computed in float32: this CPU (AVX2, no native bf16 matmul) runs a
    bf16 prefill ~6x slower than f32 (bench/RESULTS.md), and these tests check the tasks and their
    scoring, not the dtype (the CLI test below runs the real bf16 variant)."""
    import copy

    import torch

    from engine.quant.formats import get_format

    model = copy.deepcopy(default_loaded.model).to(torch.bfloat16)
    variant = variant_from_model("bf16", model, default_loaded.tokenizer, get_format("bf16"), device="cpu")
    variant.model.float()  # bf16 values held exactly in f32
    variant.dtype = torch.float32
    return variant


def test_builtin_knowledge_loglik_is_well_above_chance(bf16, real_cache):
    r = api.run(bf16, "knowledge", "loglik")
    assert r.n == 64
    lo, _ = r.accuracy.interval
    assert lo > 0.25, r.accuracy.text()  # SmolLM2-135M knows most of these simple facts


@pytest.mark.skipif(not SHARED_SAMPLES.exists(), reason="shared dataset samples not present")
def test_arc_easy_loglik_matches_published_range(bf16, real_cache):
    r = api.run(bf16, "arc_easy", "loglik", limit=60)
    lo, hi = r.accuracy.interval
    assert r.n == 60 and r.acc_norm.n == 60
    assert lo > 0.3 and hi < 0.8, r.accuracy.text()  # 135M models score ~0.5 on ARC-Easy (chance 0.25)


def test_cli_eval_table_json_and_cache(real_cache, tmp_path):
    env = {**os.environ, "QTUI_HOME": str(tmp_path), "QTUI_CACHE_DIR": str(real_cache)}
    out = tmp_path / "r.json"
    args = [
        sys.executable,
        "-m",
        "qtui",
        "eval",
        "default",
        "--task",
        "yesno",
        "--limit",
        "6",
        "--json",
        str(out),
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "yesno" in done.stdout and "n=6" in done.stdout and "acc_norm" in done.stdout
    rows = json.loads(out.read_text())
    assert rows[0]["variant"] == "bf16" and rows[0]["n"] == 6
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert "(cached)" in again.stdout


def test_cli_unknown_task_is_one_line(real_cache, tmp_path):
    env = {**os.environ, "QTUI_HOME": str(tmp_path), "QTUI_CACHE_DIR": str(real_cache)}
    done = subprocess.run([sys.executable, "-m", "qtui", "eval", "default", "--task", "nope"],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 1 and "unknown task 'nope'" in done.stderr and "Traceback" not in done.stderr
