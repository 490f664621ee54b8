"""The reliability catalogue: every bad input a one-line error, every fault survived.

One table, one row a case: the input or fault, the command, the exit code, a fragment of the
message, and what must be unchanged afterwards. Most rows run ``qtui`` in this process against tiny
random-weight models (tests/reliability/builders.py); signals and concurrent writers run real
processes; the app's rows drive it with Pilot and the fake engine. No row may print a traceback.

Placeholders in commands: {src} a tiny llama folder, {gguf} the same model as a GGUF file, {var} a
copy of a saved int4 variant, {nan} a model with NaN weights, {esc} a model that answers ESC
characters, {in} the case's own input (made by its ``prepare``), {tmp} the case's folder.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.reliability import builders
from tests.reliability.conftest import (
    Outcome,
    World,
    mounted,
    qtui_process,
    read_only,
    run_in_process,
    snapshot,
)

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # what must never reach a terminal raw
BINARY = bytes(range(256)) * 8  # a NUL at offset 0, invalid UTF-8 further on


@dataclass
class Ctx:
    world: World
    tmp: Path
    home: Path
    capsys: object
    monkeypatch: pytest.MonkeyPatch
    values: dict[str, str] = field(default_factory=dict)

    @property
    def inp(self) -> Path:
        return self.tmp / "in"

    @property
    def var(self) -> Path:
        return self.tmp / "var"

    @property
    def variants(self) -> Path:
        return self.home / "data" / "variants"


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    fault: str  # the input or fault, in words
    command: str  # qtui's arguments (placeholders above), or what a custom runner does
    code: int  # expected exit code
    message: str  # a fragment of what qtui says (stderr, or stdout on success)
    unchanged: str  # comma-separated: src gguf var in variants (the data folder's variants)
    prepare: Callable[[Ctx], None] | None = None
    runner: Callable[[Ctx, Case], Outcome] | None = None  # None: the CLI in this process


# ------------------------------------------------------------------------------ inputs
def mkdir(ctx: Ctx) -> None:
    ctx.inp.mkdir()


def config_only(ctx: Ctx) -> None:
    ctx.inp.mkdir()
    (ctx.inp / "config.json").write_text(json.dumps({"model_type": "llama"}))


def bad_config_json(ctx: Ctx) -> None:
    shutil.copytree(ctx.world.folder, ctx.inp)
    (ctx.inp / "config.json").write_text("{ not json")


def unsupported_arch(ctx: Ctx) -> None:
    ctx.inp.mkdir()
    (ctx.inp / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    (ctx.inp / "model.safetensors").write_bytes(b"\x00" * 16)


def cut_source_weights(ctx: Ctx) -> None:
    shutil.copytree(ctx.world.folder, ctx.inp)
    builders.truncate(ctx.inp / "model.safetensors", 1000)


def missing_tensor(ctx: Ctx) -> None:
    from safetensors.torch import load_file, save_file

    shutil.copytree(ctx.world.folder, ctx.inp)
    tensors = load_file(ctx.inp / "model.safetensors")
    tensors.pop("model.layers.1.mlp.down_proj.weight")
    save_file(tensors, ctx.inp / "model.safetensors", metadata={"format": "pt"})


def orphan_variant(ctx: Ctx) -> None:
    shutil.copytree(ctx.world.variant, ctx.inp)
    (ctx.inp / "qtui-manifest.json").unlink()


def text_file(name: str, content: bytes | str) -> Callable[[Ctx], None]:
    def make(ctx: Ctx) -> None:
        ctx.inp.mkdir()
        path = ctx.inp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))

    return make


def gguf_of(size: int | None = None, content: bytes | None = None) -> Callable[[Ctx], None]:
    """A .gguf in {in}: the real one cut to ``size`` bytes, or ``content``."""

    def make(ctx: Ctx) -> None:
        ctx.inp.mkdir()
        path = ctx.inp / "model.gguf"
        if content is not None:
            path.write_bytes(content)
        else:
            shutil.copy(ctx.world.gguf, path)
            if size is not None:
                builders.truncate(path, size)

    return make


def damaged_variant(damage: Callable[[Path], None]) -> Callable[[Ctx], None]:
    def make(ctx: Ctx) -> None:
        damage(ctx.var)

    return make


def manifest_edit(edit: Callable[[dict], None]) -> Callable[[Ctx], None]:
    return damaged_variant(lambda var: builders.edit_manifest(var, edit))


def first_quantized(m: dict) -> str:
    return next(k for k, v in m["tensors"].items() if v["format"] not in ("bf16", "f16", "f32"))


def double_rows(m: dict) -> None:
    entry = m["tensors"][first_quantized(m)]
    entry["shape"] = [entry["shape"][0] * 2, entry["shape"][1]]


def datasets(ctx: Ctx) -> None:
    ctx.inp.mkdir()
    row = {"question": "q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"}
    (ctx.inp / "bad.jsonl").write_text(json.dumps(row) + "\nnot json\n")
    (ctx.inp / "fields.jsonl").write_text(json.dumps({"foo": 1}) + "\n")
    (ctx.inp / "empty.jsonl").write_text("")
    (ctx.inp / "binary.txt").write_bytes(BINARY)


# ------------------------------------------------------------------------------ runners
def _wait_for(condition: Callable[[], bool], timeout: float, proc=None) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended early ({proc.returncode}): {err[-2000:]}")
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


# long enough to be caught writing (a killed run never finishes); the two writers' run finishes
LONG_GPTQ = "quantize {src} --format int4 --method gptq --samples 1024 --seq-len 256"
SHORT_GPTQ = "quantize {src} --format int4 --method gptq --samples 32 --seq-len 256"


def _tmp_folders(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp-*") if p.is_dir()] if root.exists() else []


def run_sigint(ctx: Ctx, case: Case) -> Outcome:
    """Ctrl-C while a long GPTQ run is writing: exit 130, no variant, no temporary folder."""
    proc = qtui_process(shlex.split(LONG_GPTQ.format(src=ctx.world.folder)))
    _wait_for(lambda: bool(_tmp_folders(ctx.variants)), 120, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert not _tmp_folders(ctx.variants), "an interrupted save left its temporary folder"
    assert not list(ctx.variants.rglob("qtui-manifest.json")), "an interrupted save left a variant"
    return Outcome(proc.returncode, out, err)


def run_sigkill_then_start(ctx: Ctx, case: Case) -> Outcome:
    """SIGKILL mid-save leaves a hidden temporary folder; the next start removes it."""
    proc = qtui_process(shlex.split(LONG_GPTQ.format(src=ctx.world.folder)))
    _wait_for(lambda: bool(_tmp_folders(ctx.variants)), 120, proc)
    proc.kill()
    proc.wait(60)
    left = _tmp_folders(ctx.variants)
    assert left, "the kill should leave the half-written folder behind"
    outcome = run_in_process(["variants"], ctx.capsys)
    assert not any(p.exists() for p in left), "the next start did not clean the stale folder"
    assert "no saved variants" in outcome.out
    return outcome


def run_two_writers(ctx: Ctx, case: Case) -> Outcome:
    """Two processes started together quantize the same variant: the one that takes the lock
    first wins, the other says which process holds it; the saved variant is whole."""
    argv = shlex.split(SHORT_GPTQ.format(src=ctx.world.folder))
    procs = [qtui_process(argv), qtui_process(argv)]
    done = [(p, *p.communicate(timeout=300)) for p in procs]
    winners = [d for d in done if d[0].returncode == 0]
    losers = [d for d in done if d[0].returncode != 0]
    assert len(winners) == 1 and len(losers) == 1, [(d[0].returncode, d[2][-500:]) for d in done]
    loser, out2, err2 = losers[0]
    assert f"pid {winners[0][0].pid}" in err2
    saved = list(ctx.variants.rglob("qtui-manifest.json"))
    assert len(saved) == 1 and not _tmp_folders(ctx.variants)
    check = run_in_process(["chat", str(saved[0].parent), "--prompt", "hi", "--max-tokens", "2"], ctx.capsys)
    assert check.code == 0, check.err  # the winner's variant verifies (sizes, every sha256): nothing mixed
    return Outcome(loser.returncode, out2, err2)


def run_disk_full(ctx: Ctx, case: Case) -> Outcome:
    with mounted(ctx.tmp / "small", "size=64k") as small:
        outcome = run_in_process(
            ["quantize", str(ctx.world.folder), "--format", "int4", "--out", str(small / "v")], ctx.capsys
        )
        assert list(small.iterdir()) == [], "a failed save left files on the full disk"
    return outcome


def run_read_only_out(ctx: Ctx, case: Case) -> Outcome:
    with read_only(ctx.tmp / "ro") as ro:
        argv = ["quantize", str(ctx.world.folder), "--format", "int4", "--out", str(ro / "v")]
        outcome = run_in_process(argv, ctx.capsys)
        assert list(ro.iterdir()) == []
    return outcome


def run_read_only_home(ctx: Ctx, case: Case) -> Outcome:
    with read_only(ctx.tmp / "rohome") as ro:
        ctx.monkeypatch.setenv("QTUI_HOME", str(ro))
        return run_in_process(["quantize", str(ctx.world.folder), "--format", "int8"], ctx.capsys)


def run_pilot(scenario: Callable) -> Callable[[Ctx, Case], Outcome]:
    """The app with the fake engine; the scenario returns what the user was told."""

    def run(ctx: Ctx, case: Case) -> Outcome:
        from tests.ui.fake_engine import FakeService

        fake = FakeService(ctx.tmp / "fake")
        said = asyncio.run(scenario(ctx, fake))
        return Outcome(0, said, said)

    return run


def _notices(app) -> str:
    return "\n".join(n.message for n in app._notifications)


async def app_bad_path(ctx: Ctx, fake) -> str:
    from qtui.app import QtuiApp
    from qtui.config import Settings
    from tests.helpers import until

    settings = Settings(formats=[])
    app = QtuiApp(service=fake, autoload=False, settings=settings)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.screen.query("#path-input"))
        app.screen.query_one("#path-input").value = str(ctx.tmp / "no" / "such" / "model.gguf")
        await pilot.click("#path-input")
        await pilot.press("enter")
        await until(pilot, lambda: bool(_notices(app)))
        assert settings.model == "default"  # the bad path was not taken
        return _notices(app)


async def app_broken_settings(ctx: Ctx, fake) -> str:
    from qtui.app import QtuiApp
    from qtui.config import Settings
    from tests.helpers import until

    path = Settings.path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"formats": "int4-g64", "model": 5, "max_new_tokens": "lots", "theme": []}))
    settings = Settings.load()
    assert settings.formats == ["int4-g64"] and settings.model == "default"
    assert settings.max_new_tokens == 128 and settings.theme == "textual-dark"
    app = QtuiApp(service=fake, settings=settings)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: len(app.loaded) == 2 and not app.loading)
        return f"started with defaults: model {settings.model}, formats {settings.formats}"


async def app_unwritable_settings(ctx: Ctx, fake) -> str:
    from qtui.app import QtuiApp
    from qtui.config import Settings
    from tests.helpers import until

    Settings.path().mkdir(parents=True)  # a folder where the file should be: even root cannot write it
    app = QtuiApp(service=fake, autoload=False, settings=Settings(formats=[]))
    async with app.run_test(size=(140, 40)) as pilot:
        app.action_next_theme()  # a change that saves the settings
        await until(pilot, lambda: bool(_notices(app)))
        app.action_next_theme()  # a second failure is not repeated
        await pilot.pause()
        assert len(app._notifications) == 1 and app.is_running
        return _notices(app)


async def app_escapes(ctx: Ctx, fake) -> str:
    """ANSI escapes and control characters in a prompt and in the model's answer are shown as
    visible escapes on screen: none reaches what Textual writes to the terminal."""
    from qtui.app import QtuiApp
    from qtui.config import Settings
    from tests.helpers import until
    from tests.ui import fake_engine

    ctx.monkeypatch.setitem(fake_engine.ANSWERS, "bf16", "hi \x1b[2J\x1b]0;pwned\x07 there \x1b[31mred\r\x9b")
    app = QtuiApp(service=fake, settings=Settings(formats=[]))
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: len(app.loaded) == 1 and not app.loading)
        await pilot.click("#prompt")
        app.screen.query_one("#prompt").value = "say \x1b[5mblink\x1b[0m\x08 now"
        await pilot.press("enter")
        await until(pilot, lambda: not app.screen.generating)
        await pilot.pause()
        update = app.screen._compositor.render_update(full=True)
        shown = "".join(seg.text for strip in update.strips for seg in strip)
        assert not CONTROL.search(shown), CONTROL.findall(shown)
        return shown


# ------------------------------------------------------------------------------ the table
S, Q, C, V, H, E, F, A = "sources", "quantize", "calibration", "variants", "chat", "eval", "faults", "app"
NOT_SAVED = "src,variants"
CASES = [
    # sources
    Case("src-missing", S, "a path that does not exist", "chat {tmp}/no/such/model --prompt hi", 1,
         "no such file or folder", "variants"),
    Case("src-empty-folder", S, "an empty folder", "chat {in} --prompt hi", 1,
         "is not a model folder (no config.json)", "in,variants", mkdir),
    Case("src-config-only", S, "a folder with config.json and no weights", "quantize {in} --format int4", 1,
         "has a config.json but no weights", "in,variants", config_only),
    Case("src-bad-config", S, "config.json that is not JSON", "quantize {in} --format int4", 1,
         "is not valid JSON", "in,variants", bad_config_json),
    Case("src-unsupported-arch", S, "an architecture transformers does not know", "chat {in} --prompt hi", 1,
         "is not supported", "in,variants", unsupported_arch),
    Case("src-cut-weights", S, "a source whose safetensors file is cut short", "quantize {in} --format int4",
         1, "model.safetensors", "in,variants", cut_source_weights),
    Case("src-missing-tensor", S, "a source whose weights lack a tensor (chat would run random weights)",
         "chat {in} --prompt hi", 1, "the weights lack 1 tensor(s) the model needs", "in,variants", missing_tensor),
    Case("src-not-gguf-file", S, "a file that is not .gguf", "chat {in}/notes.txt --prompt hi", 1,
         "is a file but not a .gguf", "in,variants", text_file("notes.txt", "hello")),
    Case("src-hub-offline", S, "a hub id with no network", "quantize nobody/no-such-model --format int4", 1,
         "cannot download 'nobody/no-such-model'", "variants"),
    Case("src-orphan-variant", S, "a variant folder whose manifest was deleted, given as a model",
         "chat {in} --prompt hi", 1, "no qtui-manifest.json", "in,variants", orphan_variant),
    Case("gguf-chat", S, "a real GGUF file (converted once, cached by content)",
         "chat {gguf} --prompt hi --max-tokens 3", 0, "de-quantized GGUF baseline", "gguf,variants"),
    Case("gguf-quantize", S, "a real GGUF file quantized", "quantize {gguf} --format int4 --out {tmp}/v", 0,
         "saved int4-g64 (rtn)", "gguf,variants"),
    Case("gguf-zero-bytes", S, "a zero-byte .gguf", "chat {in}/model.gguf --prompt hi", 1,
         "is empty (0 bytes), not a GGUF file", "in,variants", gguf_of(content=b"")),
    Case("gguf-random", S, "random bytes named .gguf", "quantize {in}/model.gguf --format int4", 1,
         "GGUF magic invalid", "in,variants", gguf_of(content=BINARY)),
    Case("gguf-magic-garbage", S, "the GGUF magic followed by garbage", "chat {in}/model.gguf --prompt hi", 1,
         "is not a readable GGUF file", "in,variants", gguf_of(content=b"GGUF" + BINARY)),
    Case("gguf-truncated", S, "a real GGUF cut in its tensor data", "quantize {in}/model.gguf --format int4",
         1, "is not a readable GGUF file (truncated or corrupt?)", "in,variants", gguf_of(size=500_000)),
    # quantize parameters
    Case("q-unknown-format", Q, "an unknown format", "quantize {src} --format int5", 1, "unknown format 'int5'",
         NOT_SAVED),
    Case("q-group-zero", Q, "group size 0", "quantize {src} --format int4 -g 0", 1,
         "group size 0 not supported", NOT_SAVED),
    Case("q-unknown-method", Q, "an unknown method", "quantize {src} --format int4 --method best", 1,
         "unknown method 'best'", NOT_SAVED),
    Case("q-percdamp-text", Q, "a method parameter that is not a number",
         "quantize {src} --format int4 --method gptq -p percdamp=abc", 1, "percdamp must be a number",
         NOT_SAVED),
    Case("q-blocksize-zero", Q, "a zero block size", "quantize {src} --format int4 --method gptq -p blocksize=0",
         1, "blocksize must be >= 1", NOT_SAVED),
    Case("q-blocksize-empty", Q, "an empty block size", "quantize {src} --format int4 --method gptq -p blocksize=",
         1, "blocksize must be a whole number", NOT_SAVED),
    Case("q-unknown-param", Q, "a parameter the method does not have",
         "quantize {src} --format int4 --method gptq -p speed=11", 1, "unknown parameter 'speed'", NOT_SAVED),
    Case("q-param-not-assignment", Q, "a parameter without '='", "quantize {src} --format int4 -p damp", 1,
         "is not KEY=VALUE", NOT_SAVED),
    Case("q-samples-zero", Q, "--samples 0", "quantize {src} --format int4 --method gptq --samples 0", 1,
         "samples must be >= 1", NOT_SAVED),
    Case("q-seq-len-zero", Q, "--seq-len 0", "quantize {src} --format int4 --method gptq --seq-len 0", 1,
         "seq_len must be >= 8", NOT_SAVED),
    Case("q-seq-len-over-context", Q, "--seq-len past the model's context",
         "quantize {src} --format int4 --method gptq --seq-len 4096", 1,
         "longer than the model's context (256 tokens)", NOT_SAVED),
    Case("q-seq-len-absurd", Q, "--seq-len of a million", "quantize {src} --format int4 --method gptq "
         "--seq-len 1000000", 1, "seq_len must be <= 32768", NOT_SAVED),
    Case("q-over-memory", Q, "a run the memory budget cannot hold",
         "quantize {src} --format int4 --method gptq --max-memory 1MB", 1, "but the memory budget is", NOT_SAVED),
    Case("q-memory-text", Q, "--max-memory that is not a size", "quantize {src} --format int4 --max-memory lots",
         1, "not understood", NOT_SAVED),
    Case("q-keep-negative", Q, "--keep-sensitive -1", "quantize {src} --format int4 --keep-sensitive -1", 1,
         "--keep-sensitive must be 0 or more", NOT_SAVED),
    Case("q-gptq-not-pd", Q, "GPTQ on a model with NaN weights (Hessian never positive definite)",
         "quantize {nan} --format int4 --method gptq --samples 2 --seq-len 32 --out {tmp}/v", 1,
         "Hessian is not positive definite", "variants"),
    # calibration files
    Case("calib-binary-jsonl", C, "a binary file as a .jsonl calibration set",
         "quantize {src} --format int4 --method gptq --calib {in}/c.jsonl", 1, "is a binary file", "in,src,variants",
         text_file("c.jsonl", BINARY)),
    Case("calib-binary-txt", C, "a binary file as a .txt calibration set",
         "quantize {src} --format int4 --method gptq --calib {in}/c.txt", 1, "is a binary file", "in,src,variants",
         text_file("c.txt", BINARY)),
    Case("calib-latin1", C, "a Latin-1 text file (not UTF-8)",
         "quantize {src} --format int4 --method gptq --calib {in}/c.txt", 1, "is not UTF-8 text",
         "in,src,variants", text_file("c.txt", "caf\xe9 ".encode("latin-1") * 40)),
    Case("calib-missing", C, "a calibration file that does not exist",
         "quantize {src} --format int4 --method gptq --calib {tmp}/none.jsonl", 1, "not found", NOT_SAVED),
    Case("calib-bad-line", C, "a .jsonl line that is not JSON",
         "quantize {src} --format int4 --method gptq --calib {in}/c.jsonl", 1, "line 2 is not valid JSON",
         "in,src,variants", text_file("c.jsonl", '{"text": "a fine first line of text"}\n{oops\n')),
    Case("calib-no-fields", C, "a .jsonl line without messages/prompt/text",
         "quantize {src} --format int4 --method gptq --calib {in}/c.jsonl", 1,
         "has none of 'messages', 'prompt', 'text'", "in,src,variants", text_file("c.jsonl", '{"q": 1}\n')),
    Case("calib-empty", C, "an empty .txt calibration file",
         "quantize {src} --format int4 --method gptq --calib {in}/c.txt", 1, "holds no usable text",
         "in,src,variants", text_file("c.txt", "")),
    # saved variants
    Case("var-flipped-byte", V, "one byte flipped in the weights", "chat {var} --prompt hi", 1,
         "fails its sha256 check", "var", damaged_variant(lambda v: builders.flip_byte(v / "model.safetensors"))),
    Case("var-truncated", V, "the tensor file cut short", "chat {var} --prompt hi", 1, "truncated or modified",
         "var", damaged_variant(lambda v: builders.truncate(v / "model.safetensors", 5000))),
    Case("var-manifest-deleted", V, "the manifest deleted", "chat {var} --prompt hi", 1,
         "no qtui-manifest.json", "var", damaged_variant(lambda v: (v / "qtui-manifest.json").unlink())),
    Case("var-manifest-garbage", V, "the manifest is not JSON", "chat {var} --prompt hi", 1,
         "is corrupt (not valid JSON", "var", damaged_variant(lambda v: (v / "qtui-manifest.json").write_text("{"))),
    Case("var-manifest-missing-key", V, "the manifest lacks its tensor hashes", "chat {var} --prompt hi", 1,
         "is missing 'tensor_sha256'", "var", manifest_edit(lambda m: m.pop("tensor_sha256"))),
    Case("var-path-traversal", V, "a weight file named '../../etc/passwd' in the manifest",
         "chat {var} --prompt hi", 1, "names a file outside the variant folder", "var",
         manifest_edit(lambda m: m.update(weight_files=["../../etc/passwd"]))),
    Case("var-shape-disagrees", V, "a manifest shape that disagrees with the stored tensor",
         "chat {var} --prompt hi", 1, "but the manifest implies", "var", manifest_edit(double_rows)),
    Case("var-hash-edited", V, "a tensor hash edited in the manifest", "chat {var} --prompt hi", 1,
         "fails its sha256 check", "var",
         manifest_edit(lambda m: m["tensor_sha256"].update({first_quantized(m)[:-7] + ".qweight": "0" * 64}))),
    Case("var-unknown-format", V, "an unknown format name in the manifest", "chat {var} --prompt hi", 1,
         "unknown format 'int9'", "var", manifest_edit(lambda m: m["format"].update(name="int9"))),
    Case("var-config-deleted", V, "config.json deleted", "chat {var} --prompt hi", 1,
         "config.json is missing; the variant is incomplete", "var",
         damaged_variant(lambda v: (v / "config.json").unlink())),
    # chat inputs
    Case("chat-empty-prompt", H, "an empty prompt", "chat {src} --prompt ''", 1, "the prompt is empty", "src"),
    Case("chat-prompt-over-context", H, "a prompt longer than the context",
         "chat {src} --prompt '" + "word " * 400 + "'", 1, "longer; shorten it", "src"),
    Case("chat-max-tokens-zero", H, "--max-tokens 0", "chat {src} --prompt hi --max-tokens 0", 1,
         "--max-tokens must be >= 1", "src"),
    Case("chat-max-tokens-absurd", H, "--max-tokens of a million", "chat {src} --prompt hi --max-tokens 1000000",
         1, "--max-tokens must be <= 32768", "src"),
    Case("chat-max-tokens-over-context", H, "--max-tokens past the context",
         "chat {src} --prompt hi --max-tokens 1000", 1, "use --max-tokens 252 or less", "src"),
    Case("chat-temperature-negative", H, "--temperature -1", "chat {src} --prompt hi --temperature -1", 1,
         "--temperature must be >= 0.0", "src"),
    Case("chat-temperature-nan", H, "--temperature nan", "chat {src} --prompt hi --temperature nan", 1,
         "--temperature must be a finite number", "src"),
    Case("chat-top-p-zero", H, "--top-p 0", "chat {src} --prompt hi --top-p 0", 1, "--top-p must be >= 1e-06",
         "src"),
    Case("chat-top-p-five", H, "--top-p 5", "chat {src} --prompt hi --top-p 5", 1, "--top-p must be <= 1.0",
         "src"),
    Case("chat-ansi", H, "ANSI escapes and control characters in the prompt and in the answer",
         "chat {esc} --prompt '\x1b]0;title\x07\x1b[2Jhi\r\x08' --max-tokens 4", 0, "\\x1b\\x1b\\x1b\\x1b", ""),
    # eval inputs
    Case("eval-limit-zero", E, "--limit 0", "eval {src} --task knowledge --limit 0", 1,
         "--limit must be 1 or more", "src"),
    Case("eval-limit-negative", E, "--limit -3", "eval {src} --task knowledge --limit -3", 1,
         "--limit must be 1 or more", "src"),
    Case("eval-bad-line", E, "a dataset line that is not JSON", "eval {src} --task arc_easy --data {in}/bad.jsonl",
         1, "cannot read records", "in,src", datasets),
    Case("eval-missing-fields", E, "dataset records without the task's fields",
         "eval {src} --task arc_easy --data {in}/fields.jsonl", 1, "do not have the ARC-Easy schema", "in,src",
         datasets),
    Case("eval-empty-data", E, "an empty dataset file", "eval {src} --task arc_easy --data {in}/empty.jsonl", 1,
         "no records", "in,src", datasets),
    Case("eval-binary-text", E, "a binary file as the fidelity text",
         "eval {src} --mode fidelity --task wikitext --data {in}/binary.txt", 1, "is a binary file", "in,src",
         datasets),
    Case("eval-batch-zero", E, "--batch-size 0", "eval {src} --task knowledge --mode generate --batch-size 0", 1,
         "--batch-size must be >= 1", "src"),
    Case("eval-ctx-zero", E, "--ctx 0", "eval {src} --mode fidelity --task wikitext --ctx 0", 1,
         "--ctx must be >= 2", "src"),
    Case("eval-ctx-over-context", E, "--ctx past the model's context",
         "eval {src} --mode fidelity --task passages --ctx 4096", 1, "longer than the model's context", "src"),
    Case("eval-unknown-task", E, "an unknown task", "eval {src} --task nonsense", 1, "unknown task 'nonsense'",
         "src"),
    # faults
    Case("fault-disk-full", F, "disk full (a 64 kB tmpfs) while saving", "quantize {src} --format int4 --out SMALL/v",
         1, "disk full while saving v; nothing was saved", "src,variants", runner=run_disk_full),
    Case("fault-read-only-out", F, "a read-only --out folder", "quantize {src} --format int4 --out RO/v", 1,
         "read-only file system", "src,variants", runner=run_read_only_out),
    Case("fault-read-only-home", F, "a read-only data folder (QTUI_HOME)", "quantize {src} --format int8", 1,
         "nothing was saved", "src", runner=run_read_only_home),
    Case("fault-sigint", F, "SIGINT (Ctrl-C) while a GPTQ run is writing", LONG_GPTQ, 130, "qtui: interrupted",
         "src", runner=run_sigint),
    Case("fault-sigkill-then-start", F, "SIGKILL mid-save, then the next start", LONG_GPTQ + "; kill -9; qtui variants",
         0, "(left by an interrupted save)", "src", runner=run_sigkill_then_start),
    Case("fault-two-writers", F, "two processes quantize the same variant at once", SHORT_GPTQ + " (twice)", 1,
         "is being quantized by another qtui process", "src", runner=run_two_writers),
    # the app
    Case("app-bad-path", A, "a bad path typed into the Models screen", "app: Models, path field, Enter", 0,
         "no such file or folder", "", runner=run_pilot(app_bad_path)),
    Case("app-broken-settings", A, "settings.json with wrong types", "app (start)", 0, "started with defaults",
         "", runner=run_pilot(app_broken_settings)),
    Case("app-unwritable-settings", A, "settings.json that cannot be written", "app: switch theme", 0,
         "settings not saved to", "", runner=run_pilot(app_unwritable_settings)),
    Case("app-escapes", A, "escapes in a prompt and an answer in the chat columns", "app: Chat, Enter", 0,
         "\\x1b[2J", "", runner=run_pilot(app_escapes)),
]  # fmt: skip


def test_the_catalogue_is_big_enough():
    assert len(CASES) >= 50
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.category for c in CASES} == {S, Q, C, V, H, E, F, A}


def _roots(ctx: Ctx, names: str) -> list[Path]:
    where = {"src": ctx.world.folder, "gguf": ctx.world.gguf, "var": ctx.var, "in": ctx.inp,
             "variants": ctx.variants}  # fmt: skip
    return [where[n] for n in names.split(",") if n]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, world: World, tmp_path, _isolated_home, capsys, monkeypatch):
    ctx = Ctx(world, tmp_path, _isolated_home, capsys, monkeypatch)
    shutil.copytree(world.variant, ctx.var)
    if case.prepare:
        case.prepare(ctx)
    before = snapshot(*_roots(ctx, case.unchanged))
    if case.runner is not None:
        outcome = case.runner(ctx, case)
    else:
        values = {"src": world.folder, "gguf": world.gguf, "var": ctx.var, "nan": world.nan_folder,
                  "esc": world.escape_folder, "in": ctx.inp, "tmp": tmp_path}  # fmt: skip
        outcome = run_in_process(shlex.split(case.command.format(**values)), capsys)
    said = outcome.err if case.code else outcome.out + outcome.err
    assert outcome.code == case.code, f"{case.id}: exit {outcome.code}\n{outcome.err[-3000:]}"
    assert case.message in said, f"{case.id}: {case.message!r} not in:\n{said[-3000:]}"
    assert "Traceback" not in outcome.out + outcome.err
    if case.code == 1 and case.runner is None:  # the error is one line, and the last one
        errors = [ln for ln in outcome.err.splitlines() if ln.startswith("qtui: error:")]
        assert len(errors) == 1 and outcome.err.rstrip().endswith(errors[0]), outcome.err
    assert not CONTROL.search(outcome.out), f"raw control characters on stdout: {outcome.out!r}"
    assert snapshot(*_roots(ctx, case.unchanged)) == before, f"{case.id} changed {case.unchanged}"
