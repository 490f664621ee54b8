"""``qtui export VARIANT --to gguf [--out FILE]``: a saved variant as a file another engine loads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qtui.cli_common import EXIT_OK, ProgressLine

TARGETS = ("gguf",)


def cmd_export(args) -> int:
    from engine import gguf_export

    bar = ProgressLine()
    try:
        folder = gguf_export.saved_variant(args.variant, args.method, bar)
        out = Path(args.out).expanduser() if args.out else None
        if out is not None and out.is_dir():
            out = out / f"{folder.parent.name}-{folder.name}.gguf"
        result = gguf_export.export_gguf(folder, out, bar, overwrite=args.force or out is None)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
        return EXIT_OK
    print(f"{folder.name} -> GGUF {result.file_type} (metadata from {Path(result.metadata_from).name})")
    for line in result.log_lines():
        print(f"  {line}")
    inexact = [t for t in result.tensors if t.note]
    if inexact:
        print(f"  note: {inexact[0].note} ({len(inexact)} tensors)", file=sys.stderr)
    print(f"  per-tensor check: {result.path}.export.json")
    return EXIT_OK


def register(sub) -> None:
    e = sub.add_parser("export", help="export a variant to another engine's format (GGUF for llama.cpp)")
    e.add_argument("variant", help="a saved variant folder, or MODEL:FORMAT (quantized and saved first)")
    e.add_argument("--to", choices=TARGETS, required=True, help="gguf: llama.cpp, LM Studio, ollama")
    e.add_argument(
        "--out", help="the file to write (default: $XDG_DATA_HOME/qtui/exports/SOURCE-VARIANT.gguf)"
    )
    e.add_argument("--method", default="rtn", help="method for a MODEL:FORMAT not saved yet")
    e.add_argument("--force", action="store_true", help="replace an existing --out file")
    e.add_argument(
        "--json", action="store_true", help="print the export record (per-tensor max |dW|) as JSON"
    )
    e.set_defaults(func=cmd_export)
