"""The store's writer holds the variant's lock itself (engine.locks): a direct ``save_variant``
is protected from a second writer and from the start-up clean-up of stale temporary folders, and
the lock re-enters in the thread that holds it (``quantize_and_save`` takes it, then the store)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine import locks, store
from engine.quant.formats import get_format

ROOT = Path(__file__).resolve().parents[2]

# a direct save_variant that stops in the middle of its save (after its temporary folder exists)
# until told to go on: its first progress call prints "saving" and waits for a line on stdin
CHILD = """
import sys
from pathlib import Path
from engine import store
from engine.quant.formats import get_format
from tests.helpers import build_model, build_tokenizer

def progress(done, total, text):
    if done == 0:
        print("saving", flush=True)
        sys.stdin.readline()

store.save_variant(build_model("llama"), build_tokenizer(), Path(sys.argv[1]), get_format("bf16"),
                   "rtn", {"id": "child"}, progress=progress)
print("saved", flush=True)
"""


def _tmp_folders(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if locks.stale_name(p) is not None)


def test_a_direct_save_variant_is_protected_from_clean_up_and_a_second_writer(tmp_path, tiny_model):
    dest = tmp_path / "src" / "bf16"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(dest)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "saving"
        (live,) = _tmp_folders(dest.parent)
        assert locks.clean_stale(tmp_path, depth=2) == [] and live.exists()  # a live writer's
        model, tok = tiny_model("llama")
        with pytest.raises(locks.Busy, match=rf"being written by another qtui process \(pid {child.pid}\)"):
            store.save_variant(model, tok, dest, get_format("bf16"), "rtn", {"id": "parent"}, overwrite=True)
        assert _tmp_folders(dest.parent) == [live]  # the refused writer made nothing
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "saved"
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
        child.wait()
    manifest = store.read_manifest(dest)
    assert manifest.source.id == "child"  # nothing mixed: the child's variant, whole
    store.load_tensors(dest, manifest)  # every tensor passes its sha256
    assert sorted(p.name for p in dest.parent.iterdir()) == ["bf16"]  # no temporary folder, no lock


def test_a_killed_direct_save_is_cleaned_up_at_the_next_start(tmp_path):
    dest = tmp_path / "src" / "bf16"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(dest)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "saving"
        (tmp,) = _tmp_folders(dest.parent)
    finally:
        child.kill()
        child.wait()
    assert locks.clean_stale(tmp_path, depth=2) == [tmp] and not dest.exists()


def test_the_lock_re_enters_in_the_thread_that_holds_it(tmp_path, tiny_model):
    """quantize_and_save's shape: the variant's lock, then the store's writer takes it again."""
    model, tok = tiny_model("llama")
    dest = tmp_path / "src" / "bf16"
    with locks.exclusive(dest, "quantized"):
        with locks.exclusive(dest):  # nested in one thread: a counted reference, no second flock
            assert locks.held(dest)
        assert locks.held(dest)  # the inner block's end does not release the outer one
        saved = store.save_variant(model, tok, dest, get_format("bf16"), "rtn", {"id": "x"})
        assert locks.held(dest) and locks.lock_path(dest).exists()
        assert locks.clean_stale(tmp_path, depth=2) == []
    assert not locks.held(dest) and not locks.lock_path(dest).exists()  # released with the outermost
    assert saved.path == dest and store.read_manifest(dest).source.id == "x"


def test_another_thread_meets_the_lock_as_another_process_would(tmp_path, tiny_model):
    model, tok = tiny_model("llama")
    dest = tmp_path / "v"
    errors: list[BaseException] = []

    def second_writer() -> None:
        try:
            store.save_variant(model, tok, dest, get_format("bf16"), "rtn", {"id": "thread"})
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            errors.append(exc)

    with locks.exclusive(dest, "quantized"):
        thread = threading.Thread(target=second_writer)
        thread.start()
        thread.join(timeout=60)
    assert len(errors) == 1 and isinstance(errors[0], locks.Busy)
    assert "being written by another task of this qtui process" in str(errors[0])
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    # and once released, the waiting kind gets it
    with locks.exclusive(dest):
        pass
    with locks.exclusive(dest, wait=True):
        assert locks.held(dest)
