"""Demo playlists: prompts played into side-by-side columns, for a presenter.

A playlist is YAML::

    title: What 4 bits cost
    model: default            # the source every variant is made from
    method: rtn               # the method of the quantized variants (default rtn)
    variants: [bf16, int4-g64, int2-g64]   # formats of the model, or saved variant folders
    max_tokens: 64
    steps:
      - title: A fact
        prompt: What is the capital of France?
        pause: 4              # seconds to wait after the answers, then go on (omit: wait for space)

:func:`load_playlist` checks everything before anything is played: bad YAML, a missing key, an
unknown format, a variant folder that does not exist, a negative pause are one-line
:class:`DemoError`\\ s naming the step. :func:`write_transcript` writes what was played (Markdown +
JSON) and the final comparison table.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine import paths
from engine.errors import QtuiError

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "demo" / "sample.yaml"


class DemoError(QtuiError):
    """A playlist that cannot be played; the message names the step."""


@dataclass(frozen=True)
class Step:
    title: str
    prompt: str
    pause: float | None  # seconds after the answers before the next step; None: wait for the presenter
    max_tokens: int


@dataclass(frozen=True)
class Playlist:
    path: str
    title: str
    specs: tuple[str, ...]  # what engine.specs / the service load: "default", "default:int4-g64", a folder
    labels: tuple[str, ...]  # the variants as the playlist names them
    method: str
    steps: tuple[Step, ...]


@dataclass
class StepRecord:
    """What one variant answered at one step."""

    step: int
    title: str
    prompt: str
    variant: str
    text: str
    new_tokens: int
    ttft_s: float
    decode_tps: float
    flags: list[str] = field(default_factory=list)
    same_as_baseline: bool = False


def load_playlist(path: Path | str) -> Playlist:
    import yaml  # type: ignore[import-untyped]  # PyYAML ships no types

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DemoError(f"{path}: cannot read the playlist ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise DemoError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(data, dict):
        raise DemoError(f"{path}: a playlist is a mapping with 'variants' and 'steps'")
    model = str(data.get("model", "default"))
    method = str(data.get("method", "rtn"))
    default_tokens = _int(data.get("max_tokens", 64), f"{path.name}: max_tokens")
    raw_variants = data.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise DemoError(f"{path.name}: 'variants' must list one or more variants (e.g. [bf16, int4-g64])")
    specs, labels = [], []
    for i, v in enumerate(raw_variants):
        spec, label = _variant(str(v), model, f"{path.name}: variants[{i}]")
        specs.append(spec)
        labels.append(label)
    from engine.quant.methods import get_method

    try:
        get_method(method)
    except QtuiError as exc:
        raise DemoError(f"{path.name}: method {method!r}: {exc}") from exc
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise DemoError(f"{path.name}: 'steps' must list one or more steps (title, prompt, pause)")
    steps = [_step(s, i, default_tokens) for i, s in enumerate(raw_steps)]
    title = str(data.get("title") or path.stem)
    return Playlist(str(path), title, tuple(specs), tuple(labels), method, tuple(steps))


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DemoError(f"{where} must be a whole number >= 1, got {value!r}")
    return value


def _variant(text: str, model: str, where: str) -> tuple[str, str]:
    """(spec to load, label): a format of the playlist's model, or a saved variant folder."""
    from engine.quant.formats import get_format

    path = Path(text).expanduser()
    if "/" in text or text.startswith((".", "~")):
        if not (path / paths.MANIFEST).exists():
            raise DemoError(f"{where}: {text} is not a saved variant folder (missing variant)")
        return str(path), path.name
    try:
        fmt = get_format(text)
    except QtuiError as exc:
        raise DemoError(f"{where}: {exc}") from exc
    return (model if fmt.family in ("bf16", "f16") else f"{model}:{fmt.name}"), fmt.name


def _step(raw: Any, i: int, default_tokens: int) -> Step:
    name = f"step {i + 1}"
    if not isinstance(raw, dict):
        raise DemoError(f"{name}: a step is a mapping with 'prompt' (and 'title', 'pause')")
    title = str(raw.get("title") or f"Step {i + 1}")
    name = f"step {i + 1} ({title!r})"
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DemoError(f"{name}: 'prompt' is missing or empty")
    pause = raw.get("pause")
    if pause is not None:
        if isinstance(pause, bool) or not isinstance(pause, (int, float)):
            raise DemoError(f"{name}: pause must be a number of seconds, got {pause!r}")
        if pause < 0:
            raise DemoError(f"{name}: pause must be >= 0 seconds, got {pause}")
    tokens = _int(raw.get("max_tokens", default_tokens), f"{name}: max_tokens")
    return Step(title, prompt.strip(), None if pause is None else float(pause), tokens)


def summary(records: list[StepRecord], labels: list[str]) -> list[dict[str, Any]]:
    """The final comparison: per variant, mean tokens/s, TTFT, tokens, flagged answers, and how many
    answers were identical to the first variant's (the baseline)."""
    rows = []
    for i, label in enumerate(labels):
        mine = [r for r in records if r.variant == label]
        if not mine:
            continue
        rates = [r.decode_tps for r in mine if r.decode_tps > 0]
        rows.append(
            {
                "variant": label,
                "answers": len(mine),
                "decode_tok_s": round(sum(rates) / len(rates), 1) if rates else None,
                "ttft_ms": round(1000 * sum(r.ttft_s for r in mine) / len(mine)),
                "tokens": sum(r.new_tokens for r in mine),
                "flagged": sum(bool(r.flags) for r in mine),
                "same_as_baseline": None
                if i == 0
                else sum(r.same_as_baseline for r in mine),  # 0: it is the baseline
            }
        )
    return rows


def same_text(row: dict[str, Any]) -> str:
    return "(baseline)" if row["same_as_baseline"] is None else f"{row['same_as_baseline']}/{row['answers']}"


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    head = "| variant | answers | tok/s | TTFT ms | tokens | flagged | same as baseline |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        tps = "-" if r["decode_tok_s"] is None else r["decode_tok_s"]
        lines.append(
            f"| {r['variant']} | {r['answers']} | {tps} | {r['ttft_ms']} | {r['tokens']} | {r['flagged']} | "
            f"{same_text(r)} |"
        )
    return lines


def write_transcript(playlist: Playlist, records: list[StepRecord], folder: Path | None = None) -> Path:
    """transcript.md + transcript.json (every answer, then the comparison table); returns the .md."""
    folder = folder or paths.data_dir() / "demo" / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    rows = summary(records, list(playlist.labels))
    md = [
        f"# {playlist.title}",
        "",
        f"Playlist: `{playlist.path}`; variants: {', '.join(playlist.labels)}",
        "",
    ]
    for i, step in enumerate(playlist.steps):
        played = [r for r in records if r.step == i]
        if not played:
            continue
        md += [f"## {i + 1}. {step.title}", "", f"> {step.prompt}", ""]
        for r in played:
            flags = f" [{', '.join(r.flags)}]" if r.flags else ""
            md += [f"**{r.variant}** ({r.new_tokens} tok, {r.decode_tps:.1f} tok/s){flags}: {r.text}", ""]
    md += ["## Comparison", "", *table_lines(rows), ""]
    path = folder / "transcript.md"
    path.write_text("\n".join(md))
    data = {"playlist": asdict(playlist), "records": [asdict(r) for r in records], "summary": rows}
    (folder / "transcript.json").write_text(json.dumps(data, indent=1))
    return path
