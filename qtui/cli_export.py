"""``qtui export VARIANT --to gguf|compressed-tensors [--out PATH]``: a saved variant as files another
engine loads (llama.cpp; transformers and vLLM)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from qtui.cli_common import EXIT_OK, ProgressLine

if TYPE_CHECKING:
    from engine.hf_export import HfExportResult

TARGETS = ("gguf", "compressed-tensors")


def cmd_export(args: argparse.Namespace) -> int:
    from engine import gguf_export

    if args.to == "compressed-tensors":
        _refuse_early(args)
    bar = ProgressLine()
    try:
        folder = gguf_export.saved_variant(args.variant, args.method, bar)
        if args.to == "compressed-tensors":
            from engine import hf_export

            ct_out = Path(args.out).expanduser() if args.out else None
            ct = hf_export.export_compressed_tensors(
                folder, ct_out, bar, overwrite=args.force or ct_out is None
            )
        else:
            ct = None
            out = Path(args.out).expanduser() if args.out else None
            if out is not None and out.is_dir():
                out = out / f"{folder.parent.name}-{folder.name}.gguf"
            result = gguf_export.export_gguf(folder, out, bar, overwrite=args.force or out is None)
    finally:
        bar.close()
    if ct is not None:
        return _print_compressed_tensors(args, folder, ct)
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


def _refuse_early(args: argparse.Namespace) -> None:
    """A ``MODEL:FORMAT`` whose format has no compressed-tensors mapping is refused before it is
    quantized (minutes), not after."""
    from engine import hf_export, specs
    from engine.quant.formats import get_format

    parsed = specs.parse_model_spec(args.variant, args.method)
    if parsed.folder is None:
        hf_export.weight_args(parsed.fmt or get_format("bf16"))


def _print_compressed_tensors(args: argparse.Namespace, folder: Path, result: HfExportResult) -> int:
    from engine import hf_export

    if args.json:
        print(json.dumps(result.to_json(), indent=1))
        return EXIT_OK
    print(f"{folder.name} -> compressed-tensors (pack-quantized) {result.path}")
    for line in result.log_lines():
        print(f"  {line}")
    for note in result.notes:
        print(f"  note: {note}", file=sys.stderr)
    print(f'  load: AutoModelForCausalLM.from_pretrained("{result.path}")  |  vllm serve {result.path}')
    print(f"  per-tensor check: {result.path / hf_export.RECORD}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = sub.add_parser(
        "export", help="export a variant to another engine's format (GGUF for llama.cpp, compressed-tensors)"
    )
    e.add_argument("variant", help="a saved variant folder, or MODEL:FORMAT (quantized and saved first)")
    e.add_argument(
        "--to",
        choices=TARGETS,
        required=True,
        help="gguf: llama.cpp, LM Studio, ollama; compressed-tensors: a Hugging Face checkpoint folder "
        "transformers and vLLM load (int4/int8)",
    )
    e.add_argument(
        "--out",
        help="the file (gguf) or folder (compressed-tensors) to write (default: "
        "$XDG_DATA_HOME/qtui/exports/SOURCE-VARIANT.gguf or SOURCE-VARIANT-compressed-tensors/)",
    )
    e.add_argument("--method", default="rtn", help="method for a MODEL:FORMAT not saved yet")
    e.add_argument("--force", action="store_true", help="replace an existing --out file or folder")
    e.add_argument(
        "--json", action="store_true", help="print the export record (per-tensor max |dW|) as JSON"
    )
    e.set_defaults(func=cmd_export)
