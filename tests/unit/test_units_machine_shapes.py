"""Small shared engine facts: byte sizes as shown, the machine record, the benchmark shapes."""

from __future__ import annotations

import pytest

from engine.machine import machine, machine_text
from engine.shapes import SHAPES
from engine.units import human_bytes


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 KB"),
        (1536, "1.5 KB"),
        (20_700_000, "20.7 MB"),
        (1.2e9, "1.2 GB"),
        (3e12, "3.0 TB"),
        (-2048, "-2.0 KB"),
    ],
)
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def test_machine_dict_and_line():
    info = machine(threads=3)
    assert info["threads"] == 3
    assert {"cpu", "logical_cores", "usable_cores", "torch", "transformers", "gpu"} <= set(info)
    line = machine_text(info)
    assert line.startswith(f"{info['cpu']}, {info['logical_cores']} cores, torch {info['torch']}, 3 threads")
    assert machine_text({**info, "gpu": "H200"}).endswith(", GPU H200")


def test_shapes_build_configs():
    config = SHAPES["qwen3-0.6b"].config()
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (1024, 28, 151936)
    assert config.tie_word_embeddings
    assert SHAPES["qwen3-8b"].config(num_hidden_layers=2).num_hidden_layers == 2
    assert not SHAPES["qwen3-8b"].config().tie_word_embeddings
