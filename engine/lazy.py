"""A source model that stays on disk until a piece of it is needed.

:class:`LazyModel` builds the transformers model as a skeleton on the meta device (no memory) and
reads tensors from the safetensors shards - memory-mapped, one tensor at a time - only when a
module is :meth:`~LazyModel.materialize`\\ d; :meth:`~LazyModel.release` puts the module back on
the meta device. The quantization pipeline materializes one decoder block at a time, so the peak
memory of quantizing is one block (plus calibration activations and statistics), whatever the
number of blocks. Everything a load would trip over - a missing shard, a shard cut short, an index
naming a tensor no shard has, a parameter no shard holds - is found when the model is opened and is
a one-line :class:`~engine.errors.SourceError` naming the file.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from engine.errors import SourceError
from engine.quant import arch

if TYPE_CHECKING:  # transformers is not analysed by mypy (follow_imports=skip)
    from transformers import PretrainedConfig

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


class WeightIndex:
    """Which shard holds which tensor, with every shard's header checked against its size."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.where: dict[str, Path] = {}
        self.info: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        index = self.folder / INDEX
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                files = sorted(set(weight_map.values()))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise SourceError(f"{index} is not a valid safetensors index ({exc})") from exc
        elif (self.folder / SINGLE).exists():
            weight_map, files = None, [SINGLE]
        else:
            files = sorted(p.name for p in self.folder.glob("*.safetensors"))
            weight_map = None
            if not files:
                raise SourceError(f"{self.folder} has no *.safetensors weights")
        for name in files:
            path = self.folder / name
            if not path.exists():
                raise SourceError(f"{path} is missing (named in {INDEX})")
            for key, entry in read_header(path).items():
                self.where[key], self.info[key] = path, (entry.dtype, entry.shape)
        if weight_map is not None:
            for key, name in weight_map.items():
                if self.where.get(key) != self.folder / name:
                    raise SourceError(f"{index} says {key} is in {name}, but {name} has no such tensor")

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor, read from its memory-mapped shard (and cast to ``dtype``)."""
        from safetensors import safe_open

        path = self.where.get(name)
        if path is None:
            raise SourceError(f"{self.folder}: no shard holds tensor {name}")
        try:
            with safe_open(str(path), framework="pt") as f:
                t: torch.Tensor = f.get_tensor(name)
        except Exception as exc:
            raise SourceError(f"{path}: cannot read {name} (corrupt?): {exc}") from exc
        return t if dtype is None or not t.is_floating_point() else t.to(dtype)


class TensorSpan(NamedTuple):
    """Where one tensor lies in a safetensors file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # from the start of the file
    nbytes: int


def read_header(path: Path, error: type[Exception] = SourceError) -> dict[str, TensorSpan]:
    """The tensors a safetensors file declares, checked to lie inside the file (a shard cut
    short mid-tensor is found here, before anything is read)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"header of {n} bytes does not fit")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (OSError, ValueError, struct.error) as exc:
        raise error(f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    out: dict[str, TensorSpan] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            start, end = (int(v) for v in entry["data_offsets"])
            dtype = _DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise error(f"{path}: malformed header entry for {key}") from exc
        if 8 + n + end > size:
            raise error(f"{path} is truncated: {key} ends at byte {8 + n + end}, the file has {size}")
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if start < 0 or end - start != nbytes:
            raise error(f"{path}: {key} spans {end - start} bytes, its shape {list(shape)} needs {nbytes}")
        out[key] = TensorSpan(dtype, shape, 8 + n + start, nbytes)
    return out


def read_tensor(path: Path, entry: TensorSpan) -> torch.Tensor:
    """One tensor read with plain file reads into memory torch owns: no memory map, so pages of
    the file never count in the process's resident memory (a mapped shard does while it is open)."""
    buf = torch.empty(entry.nbytes, dtype=torch.uint8)
    view = buf.numpy().data  # a writable memoryview of the bytes
    with open(path, "rb") as f:
        f.seek(entry.offset)
        done = 0
        while done < entry.nbytes:
            got = f.readinto(view[done:])
            if not got:
                raise OSError(f"{path} ended {entry.nbytes - done} bytes early")
            done += got
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=entry.dtype)
    return buf.view(entry.dtype).reshape(entry.shape)


class LazyModel:
    """The model of a HF folder as a meta-device skeleton whose modules are read on demand."""

    def __init__(self, folder: Path, config: PretrainedConfig) -> None:
        from transformers import AutoModelForCausalLM

        self.folder = Path(folder)
        self.index = WeightIndex(self.folder)
        # torch's device context is thread-local (accelerate's init_empty_weights is global)
        with torch.device("meta"):
            self.model: nn.Module = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        self.model.eval()
        self.tied: dict[str, str] = _tied(self.model)
        self.tied.update(_tied_head(self.model, config, self.index))
        missing = [k for k in self.model.state_dict() if k not in self.index and k not in self.tied]
        if missing:
            raise SourceError(
                f"{self.folder}: the weights lack {len(missing)} tensor(s) the model needs, e.g. {missing[0]}"
            )
        _rebuild_meta_buffers(self.model)

    def stored_dtype(self, name: str) -> torch.dtype:
        return self.index.info[self.tied.get(name, name)][0]

    def materialize(
        self, prefix: str, dtype: torch.dtype | None = None, skip: tuple[str, ...] = ()
    ) -> nn.Module:
        """Read the parameters and buffers of the module ``prefix`` (``""``: the whole model but
        names starting with ``skip``) from disk, cast to ``dtype`` (default: as stored). A tensor
        tied to one already read (an LM head sharing the embeddings) shares it again."""
        module = self.model.get_submodule(prefix) if prefix else self.model
        base = f"{prefix}." if prefix else ""
        tensors = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers())
        for name, tensor in tensors:
            key = base + name
            if tensor is None or not tensor.is_meta or (skip and key.startswith(skip)):
                continue
            source = self.tied.get(key, key)
            if source != key:
                shared = _real_parameter(self.model, source)
                if shared is not None:
                    _assign(module, name, shared)
                    continue
            if source not in self.index:
                continue  # a buffer the checkpoint does not hold (rebuilt at open)
            _assign(module, name, self.index.get(source, dtype))
        return module


def _assign(module: nn.Module, name: str, value: torch.Tensor) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    if attr in parent._parameters:
        parent._parameters[attr] = (
            value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad=False)
        )
    else:
        parent._buffers[attr] = value


def _real_parameter(model: nn.Module, name: str) -> nn.Parameter | None:
    try:
        p = model.get_parameter(name)
    except AttributeError:
        return None  # replaced (a quantized embedding has no weight parameter)
    return None if p.is_meta else p


def _tied(model: nn.Module) -> dict[str, str]:
    """{parameter name: the name it is tied to} (an LM head sharing the embeddings)."""
    seen: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied[name] = seen[id(p)]
        else:
            seen[id(p)] = name
    return tied


def _tied_head(model: nn.Module, config: PretrainedConfig, index: WeightIndex) -> dict[str, str]:
    """An LM head tied to the embeddings by the config but not stored, named from the config
    rather than from the skeleton's shared parameter: a skeleton built while another thread loads
    a model with transformers can come out untied (seen in the app: the bf16 baseline loading
    beside a quantize job)."""
    get_out = getattr(model, "get_output_embeddings", None)
    get_in = getattr(model, "get_input_embeddings", None)
    if not getattr(config, "tie_word_embeddings", False) or get_out is None or get_in is None:
        return {}
    head, emb = get_out(), get_in()
    if head is None or emb is None:
        return {}
    names = {id(m): n for n, m in model.named_modules()}
    head_w, emb_w = f"{names[id(head)]}.weight", f"{names[id(emb)]}.weight"
    if head_w in index or emb_w not in index:
        return {}
    head.weight = emb.weight  # share again in the skeleton too
    return {head_w: emb_w}


def _rebuild_meta_buffers(model: nn.Module) -> None:
    """Buffers no checkpoint holds (rotary ``inv_freq``): rebuild their module on the CPU."""
    for name, module in list(model.named_modules()):
        if not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        if any(p.is_meta for p in module.parameters(recurse=False)):
            arch.restore_buffers(model, module)  # Gemma's embed_scale, beside a weight read later
            continue
        config = getattr(module, "config", None) or getattr(model, "config", None)
        try:
            fresh = type(module)(config=config)
        except TypeError:
            continue  # not a config-built module: its buffers come from the checkpoint
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, fresh)
