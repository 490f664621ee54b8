"""Peak memory of quantizing a large model with the real CLI, under a hard memory cap.

    python bench/memory.py write --shape qwen3-4b --dir /tmp/q4b
    python bench/memory.py quantize --dir /tmp/q4b --method rtn --format int4 --cap-gb 2.5
    python bench/memory.py quantize --dir /tmp/q4b --method gptq --format int4 --cap-gb 4 --blocks 4
    python bench/memory.py chat --variant /tmp/q4b-int4-rtn --cap-gb 4

``write`` builds a random-weight model of a real model's shape (engine/shapes.py) as sharded bf16
safetensors, one decoder block per shard, so the builder holds one block at a time; the
tokenizer is the default model's (its ids fit every shape's vocabulary). ``quantize`` runs
``qtui quantize`` on it in a child process placed in a fresh cgroup-v1 memory group with
``memory.limit_in_bytes`` = the cap (an overshoot is killed by the kernel and fails the run; page
cache of the memory-mapped shards is reclaimable and does not count against it in practice), samples
the child's RSS every 0.1 s, attributes each sample to the block the CLI's progress names, and
prints the peak per block, the whole run's peak (the kernel's ru_maxrss of the child) and the time;
``--blocks N`` interrupts the run (SIGINT: nothing is saved) once block N+1 starts and extrapolates
the total time. ``chat`` loads a saved variant and generates a few tokens under the cap.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.shapes import SHAPES  # noqa: E402
from engine.units import human_bytes  # noqa: E402

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


# ------------------------------------------------------------------------------ write
@torch.no_grad()
def write_model(shape: str, folder: Path, layers: int | None = None, seed: int = 0) -> int:
    """A random bf16 model of ``shape`` as one shard per block (+ one for the rest); returns bytes."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from engine import sources

    overrides = {"num_hidden_layers": layers} if layers else {}
    config = SHAPES[shape].config(**overrides)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    names = list(skeleton.state_dict().keys())
    if config.tie_word_embeddings:
        names.remove("lm_head.weight")
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    groups: dict[str, list[str]] = {}
    for name in names:
        m = re.match(r"model\.layers\.(\d+)\.", name)
        groups.setdefault(f"block{int(m.group(1)):03d}" if m else "rest", []).append(name)
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    keys = sorted(groups)
    for i, key in enumerate(keys):
        shard = f"model-{i + 1:05d}-of-{len(keys):05d}.safetensors"
        tensors = {}
        for name in groups[key]:
            t = torch.empty(shapes[name], dtype=torch.bfloat16)
            if name.endswith("norm.weight"):
                t.fill_(1.0)
            else:
                t.normal_(0.0, 0.02, generator=gen)
            tensors[name] = t
            weight_map[name] = shard
            total += t.numel() * 2
        save_file(tensors, folder / shard, metadata={"format": "pt"})
        del tensors
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )
    config.torch_dtype = "bfloat16"
    config.save_pretrained(folder)
    tok_src = sources.ensure_default_model()
    for name in TOKENIZER_FILES:
        if (tok_src / name).exists():
            shutil.copy(tok_src / name, folder / name)
    return total


# ------------------------------------------------------------------------------ capped child
class Cgroup:
    """A fresh cgroup-v1 memory group with a hard limit (None when this machine allows none)."""

    def __init__(self, cap_bytes: int) -> None:
        self.path: Path | None = None
        if not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
            return
        path = CGROUP_ROOT / f"qtui-bench-{os.getpid()}"
        try:
            path.mkdir()
            (path / "memory.limit_in_bytes").write_text(str(cap_bytes))
            self.path = path
        except OSError:
            shutil.rmtree(path, ignore_errors=True)

    def add(self, pid: int) -> None:
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(pid))

    def failcnt(self) -> int:
        return int((self.path / "memory.failcnt").read_text()) if self.path else 0

    def close(self) -> None:
        if self.path is not None:
            try:
                self.path.rmdir()
            except OSError:
                pass


def run_capped(cmd: list[str], cap_gb: float, stop_at_block: int | None = None) -> dict:
    """Run ``cmd`` in a memory-capped cgroup, sampling RSS per progress line; see module doc."""
    import psutil

    cap = int(cap_gb * 1e9)
    group = Cgroup(cap)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the child joins the group itself, between fork and exec, before it allocates anything
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: _child_setup(group),
    )  # fmt: skip
    t0 = time.monotonic()
    state = {"block": -1, "line": "", "stopped": False}
    per_block: dict[int, int] = {}
    block_start: dict[int, float] = {}
    lines: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip())
            m = re.search(r"block (\d+)/(\d+)|model\.layers\.(\d+)\.", line)
            if m:
                b = int(m.group(1)) - 1 if m.group(1) else int(m.group(3))
                if b != state["block"]:
                    state["block"] = b
                    block_start[b] = time.monotonic() - t0
                    if stop_at_block is not None and b >= stop_at_block and not state["stopped"]:
                        state["stopped"] = True
                        proc.send_signal(signal.SIGINT)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    child = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = child.memory_info().rss
        except psutil.Error:
            break
        b = state["block"]
        per_block[b] = max(per_block.get(b, 0), rss)
        time.sleep(0.1)
    out = proc.stdout.read() if proc.stdout else ""
    reader.join(timeout=5)
    wall = time.monotonic() - t0
    usage = _child_maxrss()
    group_failcnt = group.failcnt()
    group.close()
    return {
        "cmd": cmd, "rc": proc.returncode, "wall_s": wall, "per_block_peak": per_block,
        "block_start_s": block_start, "peak_rss": usage, "cap": cap, "capped": group.path is not None,
        "cap_hits": group_failcnt, "stdout": out, "stderr_tail": lines[-8:], "stopped": state["stopped"],
    }  # fmt: skip


def _child_setup(group: Cgroup) -> None:
    """In the child, before exec: join the capped group; take SIGINT back (a shell starting this
    script in the background ignores it, and the child would inherit that: --blocks could not stop it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    group.add(os.getpid())


def _child_maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def qtui() -> str:
    return str(Path(sys.executable).parent / "qtui")


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("--shape", default="qwen3-4b", choices=sorted(SHAPES))
    w.add_argument("--dir", required=True)
    w.add_argument("--layers", type=int, default=None)
    q = sub.add_parser("quantize")
    q.add_argument("--dir", required=True)
    q.add_argument("--method", default="rtn")
    q.add_argument("--format", default="int4")
    q.add_argument("--cap-gb", type=float, required=True)
    q.add_argument("--blocks", type=int, default=None, help="stop after this many blocks (SIGINT)")
    q.add_argument("--device", default="cpu")
    q.add_argument("--out", default=None)
    c = sub.add_parser("chat")
    c.add_argument("--variant", required=True)
    c.add_argument("--cap-gb", type=float, required=True)
    c.add_argument("--tokens", type=int, default=8)
    args = ap.parse_args(argv)

    if args.cmd == "write":
        t0 = time.perf_counter()
        size = write_model(args.shape, Path(args.dir), args.layers)
        print(
            f"wrote {args.shape} ({human_bytes(size)} bf16) to {args.dir} in {time.perf_counter() - t0:.0f} s"
        )
        return 0
    if args.cmd == "quantize":
        out = args.out or tempfile.mkdtemp(prefix="qtui-mem-") + "/variant"
        cmd = [qtui(), "quantize", args.dir, "--format", args.format, "--method", args.method,
               "--out", out, "--force", "--device", args.device, "--max-memory", f"{args.cap_gb}GB"]  # fmt: skip
        r = run_capped(cmd, args.cap_gb, args.blocks)
        n_blocks = json.loads((Path(args.dir) / "config.json").read_text())["num_hidden_layers"]
        print(f"# qtui quantize {args.dir} --format {args.format} --method {args.method}: rc {r['rc']}, "
              f"cap {human_bytes(r['cap'])} ({'cgroup memory.limit_in_bytes' if r['capped'] else 'NO CAP AVAILABLE'}), "
              f"cap hits {r['cap_hits']}")  # fmt: skip
        print("| block | peak RSS | started at s |")
        print("|---|---|---|")
        for b in sorted(k for k in r["per_block_peak"] if k >= 0):
            print(f"| {b} | {human_bytes(r['per_block_peak'][b])} | {r['block_start_s'].get(b, 0):.1f} |")
        done = [b for b in r["block_start_s"] if b >= 0]
        extra = ""
        if r["stopped"] and len(done) > 1:
            starts = sorted(r["block_start_s"].items())
            per = (starts[-1][1] - starts[0][1]) / (len(starts) - 1)
            extra = f", {per:.1f} s a block: ~{per * n_blocks / 60:.0f} min for all {n_blocks} blocks"
        print(f"whole-run peak RSS (ru_maxrss) {human_bytes(r['peak_rss'])}, wall {r['wall_s']:.0f} s{extra}")
        print("\n".join(r["stderr_tail"][-3:]))
        print(r["stdout"].strip())
        ok = (r["rc"] == 0 or (r["stopped"] and r["rc"] == 130)) and r["peak_rss"] <= r["cap"]
        return 0 if ok else 1
    cmd = [qtui(), "chat", args.variant, "--prompt", "The capital of France is", "--max-tokens",
           str(args.tokens), "--json"]  # fmt: skip
    r = run_capped(cmd, args.cap_gb)
    manifest = json.loads((Path(args.variant) / "qtui-manifest.json").read_text())
    tensors = manifest["tensors"]
    sixteen = sum(
        2 * torch.Size(d["shape"]).numel() for k, d in tensors.items() if d["format"] in ("bf16", "f16")
    )
    quant = manifest["bytes_on_disk"] - sixteen
    print(f"# qtui chat {args.variant}: rc {r['rc']}, cap {human_bytes(r['cap'])}, capped {r['capped']}")
    print(f"peak RSS {human_bytes(r['peak_rss'])}; variant {human_bytes(manifest['bytes_on_disk'])} on disk "
          f"({human_bytes(sixteen)} 16-bit); ratio peak / (1.3 x quantized + 16-bit) = "
          f"{r['peak_rss'] / (1.3 * quant + sixteen):.2f}")  # fmt: skip
    print(r["stdout"].strip()[:400])
    return 0 if r["rc"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
