"""The llama.cpp column engine (engine.llamacpp via xllamacpp) and the column dispatch
(engine.columns): a tiny llama variant exported to GGUF, loaded in llama.cpp in-process, streamed
next to the torch column on the same prompt ids."""

from __future__ import annotations

import threading

import pytest

from engine import columns, llamacpp
from engine.columns import ColumnResult
from engine.llamacpp import LlamaCppError, parse_chunk
from engine.runtime import GenSettings
from engine.specs import parse_column_spec
from tests.helpers import quantize_saved
from tests.tiny_gguf import gguf_source

pytestmark = pytest.mark.skipif(llamacpp.version() is None, reason="xllamacpp is not installed")
SETTINGS = GenSettings(max_new_tokens=12)


@pytest.fixture(scope="module")
def variant_folder(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    src = gguf_source(tmp_path_factory.mktemp("src"))
    mp = pytest.MonkeyPatch()
    mp.setenv("QTUI_HOME", str(home))
    folder, _ = quantize_saved(src, "int8", out=home / "variants" / "int8")
    yield folder
    mp.undo()


@pytest.mark.parametrize(
    ("text", "target", "engine"),
    [
        ("default:int4", "default:int4", "torch"),
        ("default:int4@llama.cpp", "default:int4", "llama.cpp"),
        ("/some/variant@llamacpp", "/some/variant", "llama.cpp"),
        ("default@torch", "default", "torch"),
        ("remote:http://127.0.0.1:8080", "http://127.0.0.1:8080", "remote"),
        ("https://example.org/v1", "https://example.org/v1", "remote"),
        ("user@host-folder", "user@host-folder", "torch"),  # an '@' that names no engine stays
    ],
)
def test_column_spec(text, target, engine):
    spec = parse_column_spec(text)
    assert (spec.target, spec.engine) == (target, engine)


def test_llama_cpp_column_matches_the_torch_column(variant_folder):
    torch_col = columns.open_column(str(variant_folder), "cpu")
    llama_col = columns.open_column(f"{variant_folder}@llama.cpp", threads=1)
    try:
        assert (
            llama_col.backend.startswith("llama.cpp (xllamacpp ")
            and f"{llamacpp.build()}, Q8_0, activations Q8_0" in llama_col.backend
        )
        assert llama_col.gguf.exists() and llama_col.weight_bytes() > 0
        a = columns.generate(torch_col, "hello world", SETTINGS)
        tokens = []
        b = columns.generate(llama_col, "hello world", SETTINGS, on_token=tokens.append)
        assert isinstance(b, ColumnResult) and not b.error
        assert b.prompt_tokens == a.prompt_tokens  # the same prompt ids, tokenized once by qtui
        assert b.finish == "length" and b.new_tokens == SETTINGS.max_new_tokens
        assert b.token_ids[:2] == a.token_ids[:2]  # greedy: the same first tokens as torch
        assert [t.token_id for t in tokens] == b.token_ids and b.ttft_s > 0
        # the GGUF is exported once per variant: a second column reuses the cached file
        again = columns.open_column(f"{variant_folder}@llama.cpp", threads=1)
        assert again.gguf == llama_col.gguf and again.export is None
        columns.close(again)
    finally:
        columns.close(llama_col)


def test_cancel_stops_a_llama_cpp_column(variant_folder):
    col = columns.open_column(f"{variant_folder}@llama.cpp", threads=1)
    cancel = threading.Event()
    try:
        gen = columns.stream(col, "hello", GenSettings(max_new_tokens=200), cancel)
        next(gen)
        cancel.set()
        result = None
        while result is None:
            try:
                next(gen)
            except StopIteration as stop:
                result = stop.value
        assert result.finish == "stopped" and result.new_tokens < 200
    finally:
        columns.close(col)


def test_chunk_qtui_cannot_read_is_one_line():
    assert parse_chunk(
        {"choices": [{"text": "a", "logprobs": {"content": [{"id": 7}]}, "finish_reason": None}]}
    ) == (
        [7],
        "a",
        None,
    )
    with pytest.raises(LlamaCppError, match="llama.cpp sent a chunk qtui cannot read"):
        parse_chunk({"nothing": 1})


def test_missing_gguf_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(LlamaCppError):
        llamacpp.start_server(bad, 1)


def test_a_failing_column_ends_with_its_error_and_the_others_go_on():
    from engine.multichat import round_robin
    from engine.runtime import GenResult, Token

    def good():
        for i in range(3):
            yield Token(i, i, "x", 0.01 * i)
        return GenResult(text="xxx", new_tokens=3, finish="eos")

    class Broken:
        def stream(self, prompt, settings, cancel):
            yield Token(0, 5, "a", 0.01)
            raise llamacpp.LlamaCppError("llama.cpp failed: boom")

    done = {}
    round_robin(
        {"good": good(), "bad": columns.stream(Broken(), "p", SETTINGS)},  # type: ignore[arg-type]
        lambda k, t: None,
        lambda k, r: done.__setitem__(k, r),
    )
    assert done["good"].text == "xxx"
    assert done["bad"].error == "llama.cpp failed: boom" and done["bad"].text == "a"
    assert "error" in done["bad"].flags


def test_cli_chat_puts_torch_and_llama_cpp_side_by_side(variant_folder, capsys):
    from qtui.cli import main

    argv = [
        "chat",
        str(variant_folder),
        f"{variant_folder}@llama.cpp",
        "--prompt",
        "hello",
        "--max-tokens",
        "6",
    ]
    assert main([*argv, "--json"]) == 0
    torch_row, llama_row = __import__("json").loads(capsys.readouterr().out)
    assert llama_row["variant"].endswith("@llama.cpp") and llama_row["backend"].startswith(
        "llama.cpp (xllamacpp"
    )
    assert torch_row["new_tokens"] == llama_row["new_tokens"] == 6 and not llama_row["error"]


def test_hf_folder_variant_runs_on_llama_cpp(loaded_source, tmp_path):
    """No source GGUF: the metadata comes from the variant's config and tokenizer (llama family)."""
    folder, _ = quantize_saved(loaded_source("llama"), "int8", out=tmp_path / "v")
    torch_col = columns.open_column(str(folder), "cpu")
    llama_col = columns.open_column(f"{folder}@llama.cpp", threads=1)
    try:
        a = columns.generate(torch_col, "hello world", SETTINGS)
        b = columns.generate(llama_col, "hello world", SETTINGS)
        assert not b.error and b.new_tokens == SETTINGS.max_new_tokens
        assert b.token_ids[:2] == a.token_ids[:2]
    finally:
        columns.close(llama_col)


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["cp310-abi3-manylinux_2_17_x86_64", "cp310-abi3-manylinux2014_x86_64"], "prebuilt"),  # PyPI's
        (["cp310-abi3-macosx_11_0_arm64"], "prebuilt"),
        (["cp310-abi3-linux_x86_64"], "native build"),  # pip wheel --no-binary xllamacpp, on this machine
        ([], ""),
    ],
)
def test_build_kind_comes_from_the_wheel_tags(monkeypatch, tags, expected):
    from importlib import metadata

    class Dist:
        def read_text(self, name):
            assert name == "WHEEL"
            return "Wheel-Version: 1.0\n" + "".join(f"Tag: {t}\n" for t in tags)

    monkeypatch.setattr(metadata, "distribution", lambda name: Dist())
    assert llamacpp.build() == expected


def test_installed_wheel_is_the_registrys_prebuilt_one():
    """make test installs xllamacpp from PyPI: its column must say so (make llamacpp-native changes it)."""
    if llamacpp.build() == "native build":
        pytest.skip("this .venv has the native build (make llamacpp-native)")
    assert llamacpp.build() == "prebuilt"
