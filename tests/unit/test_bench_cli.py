"""``qtui bench`` and bench/decode.py hand the benchmark one BenchOptions with every flag in it
(``qtui bench`` once rebuilt an argv list and dropped ``--json`` and ``--llama-cpp``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine import benchmark
from engine.benchmark import BenchError, BenchOptions
from qtui.cli import main

ARGS = ["--formats", "bf16", "--tokens", "4", "--threads", "1", "--repeats", "1", "--llama-cpp"]


def test_qtui_bench_passes_every_option(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(benchmark, "run", seen.append)
    assert main(["bench", *ARGS, "--json", str(tmp_path / "b.json")]) == 0
    assert seen == [BenchOptions("default", 4, 1, 1, ("bf16",), 0, tmp_path / "b.json", True)]


def test_bench_script_parses_to_the_same_options(tmp_path):
    opts = benchmark.parse_args([*ARGS, "--json", str(tmp_path / "b.json")])
    assert opts == BenchOptions("default", 4, 1, 1, ("bf16",), 0, tmp_path / "b.json", True)
    assert benchmark.parse_args([]).formats == benchmark.FORMATS


def test_qtui_bench_writes_json_and_adds_llama_cpp_row(monkeypatch, tmp_path):
    src = benchmark.Source("fake", torch.nn.Linear(2, 2), None, torch.zeros(1, 3, dtype=torch.long))
    llama_calls = []

    def fake_llama(src, tokens, threads, repeats):
        llama_calls.append((tokens, threads, repeats))
        return benchmark.Row("Q4_1 GGUF (llama.cpp)", "llama.cpp", 5.0, 0.1, 100, tokens)

    def fake_formats(src, formats, tokens, repeats):
        return [benchmark.Row(f, "dense", 10.0, 0.1, 200, tokens) for f in formats]

    monkeypatch.setattr(benchmark, "load_source", lambda name, seed=0: src)
    monkeypatch.setattr(benchmark, "bench_formats", fake_formats)
    monkeypatch.setattr(benchmark, "try_llama_cpp", fake_llama)
    out = tmp_path / "bench.json"
    assert main(["bench", *ARGS, "--json", str(out)]) == 0
    assert llama_calls == [(4, 1, 1)]
    info = json.loads(out.read_text())
    assert [r["format"] for r in info["rows"]] == ["bf16", "Q4_1 GGUF (llama.cpp)"]
    assert info["machine"]["threads"] == 1


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (BenchOptions(tokens=1), "--tokens"),
        (BenchOptions(formats=("int5",)), "int5"),
        (BenchOptions(formats=("int4-g64:nope",)), "unknown backend"),
        (BenchOptions(model="shape:qwen9"), "unknown shape"),
        (BenchOptions(model="shape:qwen3-0.6b", llama_cpp=True), "--llama-cpp needs --model default"),
    ],
)
def test_bad_options_fail_before_loading(opts, message, monkeypatch):
    monkeypatch.setattr(benchmark, "load_source", pytest.fail)
    with pytest.raises(BenchError, match=message):
        benchmark.run(opts)


def test_qtui_bench_reports_bad_options_in_one_line(capsys):
    assert main(["bench", "--formats", "int5"]) != 0
    assert capsys.readouterr().err.startswith("qtui: error: ")


def test_json_out_is_a_path():
    ns = type("NS", (), dict(model="default", tokens=8, threads=1, repeats=1, formats=None))
    ns.json_out, ns.llama_cpp = "x.json", False
    opts = BenchOptions.from_args(ns)
    assert opts.json_out == Path("x.json") and opts.formats == benchmark.FORMATS
