"""One peer quantizer on one model, run inside the peer's own virtual environment; writes a JSON row.

python bench/peers_worker.py --peer {gptqmodel,bnb,torchao,hqq} --model DIR --calib CALIB.json
                             --reference REF.safetensors --out RESULT.json
                             [--group-size 64] [--threads 2] [--decode-tokens 64]

Driven by bench/methods_vs_peers.py. Imports only torch, the peer's own packages, transformers,
bench/peers_common.py and engine/evals/fidelity.py (torch only), so it runs in a bare peer venv.
Every peer: int4 (nf4 for bitsandbytes), groups of --group-size (64), the decoder's Linear layers
only (embeddings and the tied lm_head stay 16-bit, as in qtui's rows), bf16 activations, CPU.
A failure exits 1 with one line on stderr.

Result JSON
-----------
``peer, label, version, quantize_s`` (wall seconds from the float model loaded to the quantized model
ready; GPTQModel: quantize + save + load back; bitsandbytes quantizes while loading, so there it is
the whole quantized ``from_pretrained``), ``quantize_only_s`` (GPTQModel's ``quantize()`` alone, else
null), ``setup_cpu_s`` (process CPU seconds, all threads, of loading + quantizing: the fairer cost on
a shared machine), ``kld_mean, kld_p99, top1, ppl_ratio, n_tokens`` (engine.evals.fidelity.compare),
``decode_tok_s`` (peers_common.decode_tok_s after the reference's first 32 tokens), ``backend``,
``notes``, ``torch``, ``threads``.

Installing (what :func:`install_commands` and :data:`ENV` give the driver)
--------------------------------------------------------------------------
Convention: every entry of ``install_commands(peer)`` is run as ``[venv_python, "-m", *args]`` in a
fresh ``python -m venv`` with ``{**os.environ, **ENV[peer]}``. The first command installs CPU torch
2.13.0 alone (pip picks the local ``torch-2.13.0+cpu`` wheel from /opt/wheels: +cpu sorts above the
plain PyPI 2.13.0); every later command repeats ``torch==2.13.0`` as a requirement, which binds the
resolver exactly as a constraints file would, so pip keeps the installed CPU build and never pulls
a CUDA torch, triton or ``nvidia-*`` wheels (checked: ``pip list | grep -i -e nvidia -e triton`` is
empty in all three venvs). No constraints file is needed. Install times: wall, 2-core machine
shared with another benchmark, from ``python -m venv`` to the last pip line (torch from the local
wheel, everything else downloaded from PyPI on the first install).

* gptqmodel: ``pip install torch==2.13.0`` then ``pip install torch==2.13.0 gptqmodel==7.6.0``;
  env ``BUILD_CUDA_EXT=0`` (7.6.0's setup.py builds no extension at all - its kernels are
  JIT-compiled at run time - so it is only a safeguard) and ``GPTQMODEL_CPU_WORKERS=2`` (needed at
  run time on 2 cores). GPTQModel 7.6.0 is an sdist (pure Python); pypcre, tokenicer, logbar,
  device-smi and defuser are built from sdists too (small; pip caches the wheels). Pulls
  transformers 5.24.0, accelerate, torchao 0.18.0, datasets, pandas, pyarrow and numpy 2.2.6
  (pinned by gptqmodel). 91 s. On CPU, ``BACKEND.AUTO`` loads the result with ``TorchAtenLinear``
  (aten ``_weight_int4pack_mm_for_cpu``, the same int4pack kernel qtui uses).
* bnb: ``pip install torch==2.13.0`` then ``pip install torch==2.13.0 bitsandbytes==0.50.2
  transformers==5.24.0 accelerate safetensors`` (accelerate: ``device_map``, which the 4-bit load
  requires). Wheels only; 39 s. bitsandbytes >= 0.47 ships its CPU backend in the manylinux wheel;
  with AVX512-BF16 its nf4 Linear4bit repacks the weight on first use and runs
  ``libbitsandbytes_cpu``'s fused ``gemv_4bit`` kernel (any batch size); without AVX512-BF16 it
  dequantizes and calls torch's matmul. It would rather use the
  ``kernels-community/quantization-bitsandbytes`` kernel from the Hugging Face hub (needs the
  ``kernels`` package and the network); without it, it logs one warning and uses its own.
* torchao: ``pip install torch==2.13.0`` then ``pip install torch==2.13.0 torchao==0.15.0
  transformers==5.24.0 safetensors``. Wheels only; 31 s (62 s on the first, uncached install).
  0.15.0 is the newest torchao with a CPU int4 weight-only path: ``Int4WeightOnlyConfig(
  group_size=64, layout=Int4CPULayout(), use_hqq=True, version=1)`` (aten
  ``_weight_int4pack_mm_for_cpu``; version 1 prints a deprecation warning). 0.16 dropped version 1
  of the config; 0.17 / 0.18 (the only ones built for torch >= 2.11) dropped ``Int4CPULayout``, and
  their int4 formats need CUDA (``tile_packed_to_4d``, the only one HQQ works with: "Torch not
  compiled with CUDA enabled") or fbgemm-gpu-genai / mslk (``plain``). Under torch 2.13, torchao
  0.15 skips loading its own C++ extensions (built for torch 2.9, one warning); the CPU int4 path
  does not need them.
* hqq: no venv; hqq 0.2.8.post1 is one of qtui's dependencies, so it runs in qtui's environment
  (``install_commands("hqq") == []``). Its default backend (PYTORCH) dequantizes every call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("gptqmodel", "bnb", "torchao", "hqq")
TORCH = "torch==2.13.0"
PINS = {
    "gptqmodel": ["gptqmodel==7.6.0"],
    "bnb": ["bitsandbytes==0.50.2", "transformers==5.24.0", "accelerate", "safetensors"],
    "torchao": ["torchao==0.15.0", "transformers==5.24.0", "safetensors"],
    "hqq": [],  # runs in qtui's own environment
}
_QUIET = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
# Extra environment per peer, for installing and for running the worker.
ENV: dict[str, dict[str, str]] = {
    "gptqmodel": {**_QUIET, "BUILD_CUDA_EXT": "0", "GPTQMODEL_CPU_WORKERS": "2"},
    "bnb": dict(_QUIET),
    "torchao": dict(_QUIET),
    "hqq": dict(_QUIET),
}
PACKAGE = {"gptqmodel": "gptqmodel", "bnb": "bitsandbytes", "torchao": "torchao", "hqq": "hqq"}


def install_commands(peer: str) -> list[list[str]]:
    """pip argument lists for ``peer``'s venv, each to run as ``[venv_python, "-m", *args]``, in order."""
    if peer not in PINS:
        raise ValueError(f"unknown peer {peer!r} (known: {', '.join(PEERS)})")
    if not PINS[peer]:
        return []
    return [["pip", "install", TORCH], ["pip", "install", TORCH, *PINS[peer]]]


class PeerError(Exception):
    """A one-line reason the peer could not run."""


# ------------------------------------------------------------------------------------------ peers
def _version(peer: str) -> str:
    try:
        return metadata.version(PACKAGE[peer])
    except metadata.PackageNotFoundError:
        raise PeerError(
            f"{PACKAGE[peer]} is not installed in this environment: run methods_vs_peers.py --install"
        ) from None


def _load_float(model_dir: str, torch):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()  # on the CPU


def _decoder_linears(model, torch) -> list[tuple[str, object]]:
    return [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and name.startswith("model.layers.")
    ]


def _set_module(model, name: str, module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def run_gptqmodel(a, torch, calib: list[list[int]]) -> dict:
    version = _version("gptqmodel")
    from peers_common import hf_model

    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(a.threads))
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    qcfg = QuantizeConfig(bits=4, group_size=a.group_size)
    model = GPTQModel.load(a.model, qcfg, device="cpu", dtype=torch.bfloat16)
    data = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calib]
    with tempfile.TemporaryDirectory(prefix="gptqmodel-") as tmp:
        t0 = time.perf_counter()
        model.quantize(data, batch_size=1)
        quantize_only = time.perf_counter() - t0
        model.save(tmp)
        del model
        qmodel = GPTQModel.load(tmp, device="cpu", backend=BACKEND.AUTO, dtype=torch.bfloat16)
        seconds = time.perf_counter() - t0
    kernels = sorted({type(m).__name__ for _, m in qmodel.named_modules() if hasattr(m, "qweight")})
    cfg = qmodel.quantize_config
    settings = ", ".join(
        f"{k}={getattr(cfg, k)}"
        for k in ("desc_act", "sym", "act_group_aware", "damp_percent")
        if hasattr(cfg, k)
    )
    return dict(
        model=hf_model(qmodel),  # the transformers model inside GPTQModel's wrapper
        label=f"GPTQModel {version} GPTQ int4 g{a.group_size}",
        version=version,
        quantize_s=seconds,
        quantize_only_s=quantize_only,
        backend=f"GPTQModel {getattr(qmodel, 'backend', BACKEND.AUTO)} -> {'/'.join(kernels) or '?'}",
        notes=(
            f"library defaults ({settings}); {len(calib)} calibration windows of {len(calib[0])} tokens; "
            "quantize_s = quantize + save + load back, quantize_only_s = quantize(); bf16"
        ),
    )


def run_bnb(a, torch, calib) -> dict:
    version = _version("bnb")
    if a.group_size != 64:
        raise PeerError(f"bitsandbytes nf4 uses blocks of 64, not {a.group_size}")
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    t0 = time.perf_counter()
    _load_float(a.model, torch)  # also warms the page cache for the timed load below
    float_load = time.perf_counter() - t0
    cfg = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        a.model, quantization_config=cfg, dtype=torch.bfloat16, device_map="cpu"
    ).eval()
    seconds = time.perf_counter() - t0
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    if not layers:
        raise PeerError("bitsandbytes quantized no layer")
    with torch.inference_mode():
        model(input_ids=torch.tensor([calib[0][:8]]))  # Linear4bit repacks for the CPU kernel on first use
    state = layers[0].weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        backend = f"bitsandbytes {version} CPU gemv_4bit (AVX512-BF16, fused nf4)"
    else:
        backend = f"bitsandbytes {version} CPU dequantize_4bit + torch matmul"
    return dict(
        model=model,
        label=f"bitsandbytes {version} nf4 b{state.blocksize}",
        version=version,
        quantize_s=seconds,
        quantize_only_s=None,
        backend=backend,
        notes=(
            f"transformers BitsAndBytesConfig nf4, blocksize {state.blocksize}, no double quant, compute bf16; "
            f"{len(layers)} Linear4bit; quantize_s = the whole quantized from_pretrained "
            f"(a plain bf16 from_pretrained took {float_load:.1f} s)"
        ),
    )


def run_torchao(a, torch, calib) -> dict:
    version = _version("torchao")
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    try:
        from torchao.dtypes import Int4CPULayout
    except ImportError:
        raise PeerError(
            f"torchao {version} has no Int4CPULayout (CPU int4 weight-only was removed in 0.17): install torchao==0.15.0"
        ) from None
    model = _load_float(a.model, torch)
    cfg = Int4WeightOnlyConfig(
        group_size=a.group_size, layout=Int4CPULayout(), use_hqq=True, version=1, set_inductor_config=False
    )
    names = {name for name, _ in _decoder_linears(model, torch)}
    t0 = time.perf_counter()
    quantize_(model, cfg, filter_fn=lambda m, fqn: fqn in names)
    seconds = time.perf_counter() - t0
    weight = model.get_submodule(sorted(names)[0]).weight
    layout = getattr(getattr(weight, "tensor_impl", None), "_layout", None)
    return dict(
        model=model,
        label=f"torchao {version} int4 HQQ g{a.group_size}",
        version=version,
        quantize_s=seconds,
        quantize_only_s=None,
        backend=f"torchao {type(weight).__name__}/{type(layout).__name__} -> aten _weight_int4pack_mm_for_cpu",
        notes=(
            f"Int4WeightOnlyConfig(group_size={a.group_size}, layout=Int4CPULayout(), use_hqq=True, version=1) "
            f"via quantize_ on {len(names)} decoder Linears; bf16 activations, float zero point"
        ),
    )


def run_hqq(a, torch, calib) -> dict:
    version = _version("hqq")
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    model = _load_float(a.model, torch)
    qcfg = BaseQuantizeConfig(nbits=4, group_size=a.group_size)
    targets = _decoder_linears(model, torch)
    t0 = time.perf_counter()
    for name, lin in targets:
        _set_module(model, name, HQQLinear(lin, qcfg, compute_dtype=torch.bfloat16, device="cpu"))
    seconds = time.perf_counter() - t0
    return dict(
        model=model,
        label=f"hqq {version} int4 g{a.group_size}",
        version=version,
        quantize_s=seconds,
        quantize_only_s=None,
        backend=f"hqq HQQLinear backend {HQQLinear.backend.name} (dequantize + torch matmul)",
        notes=(
            f"HQQLinear(BaseQuantizeConfig(nbits=4, group_size={a.group_size})) defaults (axis=1, optimize, "
            f"round_zero) on {len(targets)} decoder Linears, compute bf16"
        ),
    )


RUNNERS = {"gptqmodel": run_gptqmodel, "bnb": run_bnb, "torchao": run_torchao, "hqq": run_hqq}


# ------------------------------------------------------------------------------------------- main
def measure(a) -> dict:
    for key, value in ENV[a.peer].items():
        os.environ.setdefault(key, value)
    import torch

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from peers_common import decode_tok_s

    from engine.evals import fidelity

    torch.set_num_threads(a.threads)
    ref = fidelity.load_reference(a.reference)
    if ref is None:
        raise PeerError(f"cannot read the reference {a.reference}")
    calib = [list(map(int, w)) for w in json.loads(Path(a.calib).read_text())["windows"]]
    cpu0 = time.process_time()
    row = RUNNERS[a.peer](a, torch, calib)
    cpu_s = time.process_time() - cpu0
    model = row.pop("model").eval()
    fid = fidelity.compare(model, ref)
    speed = decode_tok_s(model, ref.token_windows[0][:32], a.decode_tokens)
    return dict(
        peer=a.peer,
        label=row["label"],
        version=row["version"],
        quantize_s=row["quantize_s"],
        quantize_only_s=row["quantize_only_s"],
        setup_cpu_s=cpu_s,
        kld_mean=fid.kld_mean,
        kld_p99=fid.kld_p99,
        top1=fid.top1_agreement,
        ppl_ratio=fid.ppl_ratio,
        n_tokens=fid.n_tokens,
        decode_tok_s=speed,
        backend=row["backend"],
        notes=row["notes"],
        torch=torch.__version__,
        threads=a.threads,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer", required=True, choices=PEERS)
    ap.add_argument("--model", required=True, help="transformers model folder")
    ap.add_argument("--calib", required=True, help='JSON {"windows": [[token ids...], ...]}')
    ap.add_argument("--reference", required=True, help="fidelity reference (.safetensors)")
    ap.add_argument("--out", required=True, help="result JSON")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=64)
    a = ap.parse_args(argv)
    try:
        result = measure(a)
    except PeerError as exc:
        print(f"{a.peer}: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"{a.peer}: import failed ({exc}): run methods_vs_peers.py --install", file=sys.stderr)
        return 1
    except Exception as exc:  # one line for the driver's table; the peer's own logs are above it
        text = " ".join(str(exc).split())[:400]
        print(f"{a.peer} failed: {type(exc).__name__}: {text}", file=sys.stderr)
        return 1
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
