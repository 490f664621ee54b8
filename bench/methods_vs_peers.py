"""qtui's int4 methods beside the tools a user would otherwise reach for, in one run.

python bench/methods_vs_peers.py [--install] [--peers gptqmodel,bnb,torchao,hqq] [--root DIR]
                                 [--tokens 2048] [--samples 16] [--seq-len 256] [--threads 2]
                                 [--decode-tokens 64] [--out FILE.md] [--json FILE]

Every row: the default model (SmolLM2-135M-Instruct), int4 with groups of 64 (nf4 blocks of 64 for
bitsandbytes), the same calibration token windows (qtui's built-in set, --samples x --seq-len) for
the methods that calibrate, the same KLD measurement (engine.evals.fidelity over --tokens WikiText-2
tokens, reference = the model in bf16, top-4096 + rest bucket) and the same decode loop
(bench/peers_common.decode_tok_s: greedy, one token per forward, transformers' KV cache).

Peers run in their own throw-away virtual environments under --root (default
$XDG_CACHE_HOME/qtui/peers), never in qtui's: --install creates and fills the missing ones (pip,
CPU torch 2.13.0 first, so nothing pulls a CUDA build). The hqq package's own backend runs in this
environment (hqq is a qtui dependency). A peer that is not installed or fails is a row with its
error, and the run goes on.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from methods import measure_method  # noqa: E402
from peers_common import decode_tok_s  # noqa: E402

from engine import paths, sources  # noqa: E402
from engine.evals import fidelity  # noqa: E402
from engine.evals.data import SHARED_SAMPLES  # noqa: E402
from engine.machine import machine_text  # noqa: E402
from engine.quant import calibration as C  # noqa: E402

WIKI = SHARED_SAMPLES / "wikitext2_test_head.txt"
QTUI_ROWS = [
    ("rtn", "int4-g64", "plain round to nearest (min/max, integer zero)"),
    ("gptq", "int4-g64", "GPTQ, mse range search, integer zero"),
    ("awq", "int4-g64", "AWQ scale search, integer zero"),
    ("hqq", "int4fz-g64", "hqq's solver, f16 zero"),
]
PEERS = ("gptqmodel", "bnb", "torchao", "hqq")
IN_THIS_ENV = {"hqq"}  # hqq is one of qtui's own dependencies


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--install", action="store_true", help="create and fill missing peer venvs")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--root", default=str(paths.cache_dir() / "peers"))
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--skip-qtui", action="store_true", help="only the peers")
    ap.add_argument("--out")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    peers = [p for p in a.peers.split(",") if p]
    for p in peers:
        if p not in PEERS:
            ap.error(f"unknown peer {p!r} (known: {', '.join(PEERS)})")

    loaded = sources.load(sources.resolve("default"))
    model_dir = sources.default_model_dir()
    windows = fidelity.token_windows(loaded.tokenizer, WIKI.read_text(), ctx=512, max_tokens=a.tokens)
    base = copy.deepcopy(loaded.model).to(torch.bfloat16).eval()
    ref = fidelity.reference(base, windows)
    prompt = windows[0][:32]
    cal = C.build(C.CalibrationSpec(samples=a.samples, seq_len=a.seq_len), loaded.tokenizer)
    work = Path(tempfile.mkdtemp(prefix="qtui-peers-"))
    fidelity.save_reference(ref, work / "reference.safetensors")
    (work / "calib.json").write_text(json.dumps({"windows": cal.ids.tolist()}))
    log(f"reference: {ref.n_positions} positions; calibration {cal.describe()}; work dir {work}")

    rows: list[dict] = []
    bf16_speed = decode_tok_s(base, prompt, a.decode_tokens)
    rows.append(dict(tool="bf16 (reference)", kld_mean=0.0, kld_p99=0.0, top1=1.0, ppl_ratio=1.0,
                     quantize_s=None, decode_tok_s=bf16_speed, backend="torch matmul, bf16"))  # fmt: skip
    del base
    if not a.skip_qtui:
        for meth_name, fmt_name, what in QTUI_ROWS:
            rows.append(qtui_row(loaded, ref, cal, prompt, meth_name, fmt_name, what, a.decode_tokens))
            log(fmt_row(rows[-1]))
    for peer in peers:
        rows.append(peer_row(peer, a, model_dir, work))
        log(fmt_row(rows[-1]))
    text = render(rows, a, cal, ref)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine_text(), "rows": rows}, indent=1))
    return 0


def qtui_row(loaded, ref, cal, prompt, meth_name: str, fmt_name: str, what: str, n: int) -> dict:
    row, model = measure_method(loaded, ref, cal, meth_name, fmt_name)
    return dict(
        tool=f"qtui {meth_name.upper()} {fmt_name}",
        notes=what,
        kld_mean=row["kld_mean"],
        kld_p99=row["kld_p99"],
        top1=row["top1"],
        ppl_ratio=row["ppl_ratio"],
        quantize_s=row["ready_seconds"],  # from the float model to the model ready to run, as for peers
        decode_tok_s=decode_tok_s(model, prompt, n),
        backend=f"qtui {row['kernel']}",
    )


def peer_python(peer: str, root: Path) -> Path:
    return Path(sys.executable) if peer in IN_THIS_ENV else root / peer / "bin" / "python"


def install_peer(peer: str, root: Path) -> None:
    import peers_worker

    venv = root / peer
    log(f"installing {peer} into {venv} ...")
    t0 = time.perf_counter()
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, **peers_worker.ENV.get(peer, {})}
    for args in peers_worker.install_commands(peer):
        subprocess.run([str(venv / "bin" / "python"), "-m", *args], check=True, env=env)
    log(f"installed {peer} in {time.perf_counter() - t0:.0f}s")


def peer_row(peer: str, a, model_dir: Path, work: Path) -> dict:
    import peers_worker

    root = Path(a.root)
    python = peer_python(peer, root)
    if not python.exists() and a.install:
        try:
            install_peer(peer, root)
        except subprocess.CalledProcessError as exc:
            return dict(tool=peer, error=f"install failed: {exc}")
    if not python.exists():
        return dict(tool=peer, error=f"not installed (run with --install; venv {root / peer})")
    out = work / f"{peer}.json"
    cmd = [str(python), str(ROOT / "bench" / "peers_worker.py"), "--peer", peer, "--model", str(model_dir),
           "--calib", str(work / "calib.json"), "--reference", str(work / "reference.safetensors"),
           "--out", str(out), "--threads", str(a.threads), "--decode-tokens", str(a.decode_tokens)]  # fmt: skip
    env = {**os.environ, **peers_worker.ENV.get(peer, {})}
    t0 = time.perf_counter()
    # run in the work dir: GPTQModel writes logs/ into its working directory
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
    if done.returncode != 0 or not out.exists():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return dict(tool=peer, error=f"exit {done.returncode}: {tail}")
    row = json.loads(out.read_text())
    row["tool"] = row.get("label", peer)
    row["process_s"] = time.perf_counter() - t0
    return row


def fmt_row(r: dict) -> str:
    if "error" in r:
        return f"{r['tool']}: {r['error']}"
    q = "-" if r.get("quantize_s") is None else f"{r['quantize_s']:.1f}"
    return f"{r['tool']}: KLD {r['kld_mean']:.4f} top-1 {r['top1']:.3f} quantize {q}s {r['decode_tok_s']:.1f} tok/s"


def render(rows: list[dict], a, cal, ref) -> str:
    head = [
        "# qtui vs peers: int4 g64 on the default model (SmolLM2-135M-Instruct)",
        "",
        f"Machine: {machine_text()}. Fidelity: KLD vs bf16 over {ref.n_positions} WikiText-2 "
        f"positions (windows of 512, top-4096 + rest bucket). Calibration (GPTQ, AWQ, GPTQModel): qtui's "
        f"built-in set, {cal.ids.shape[0]} x {cal.ids.shape[1]} tokens. Decode: {a.decode_tokens} greedy tokens "
        "after a 32-token prompt, median of 3, the same loop for every row.",
        "",
        "| tool / method | KLD mean | KLD p99 | top-1 agree | PPL ratio | quantize s | decode tok/s | backend |",
        "|---|---|---|---|---|---|---|---|",
    ]
    body = []
    for r in rows:
        if "error" in r:
            body.append(f"| {r['tool']} | - | - | - | - | - | - | {r['error']} |")
            continue
        q = "-" if r.get("quantize_s") is None else f"{r['quantize_s']:.1f}"
        body.append(
            f"| {r['tool']} | {r['kld_mean']:.4f} | {r['kld_p99']:.3f} | {r['top1']:.3f} | {r['ppl_ratio']:.3f} "
            f"| {q} | {r['decode_tok_s']:.1f} | {r.get('backend', '-')} |"
        )
    ok = [r for r in rows if "error" not in r and r.get("quantize_s") is not None]
    tail = [""]
    if ok:
        best = min(ok, key=lambda r: r["kld_mean"])
        tail.append(f"Lowest KLD: {best['tool']} ({best['kld_mean']:.4f}).")
    ours = next((r for r in ok if r["tool"].startswith("qtui GPTQ")), None)
    theirs = next((r for r in ok if r["tool"].startswith("GPTQModel")), None)
    if ours and theirs:
        ratio = theirs["quantize_s"] / ours["quantize_s"]
        tail.append(
            f"GPTQ time: qtui {ours['quantize_s']:.1f} s vs GPTQModel {theirs['quantize_s']:.1f} s "
            f"({ratio:.2f}x {'faster' if ratio >= 1 else 'slower'})."
        )
    notes = [f"- {r['tool']}: {r['notes']}" for r in rows if r.get("notes")]
    return "\n".join(head + body + tail + ([""] + notes if notes else [])) + "\n"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
