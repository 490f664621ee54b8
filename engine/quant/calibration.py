"""Calibration data: the token windows a calibrated method (GPTQ, AWQ, SmoothQuant) looks at.

Three kinds of source, one :class:`CalibrationSpec` each time:

* ``builtin``: ``assets/calibration/`` - instructions and answers written for qtui, rendered with
  the model's own chat template (what the model will be asked), plus plain prose;
* a ``.jsonl`` file: one object a line with ``messages`` (chat), ``prompt``/``response`` or ``text``;
* a ``.txt`` file (e.g. a WikiText slice): paragraphs split on blank lines.

Every document is tokenized, the documents are joined with the EOS token into one stream, and the
stream is cut into ``samples`` windows of ``seq_len`` tokens. A stream shorter than that is reused
from the start (``unique_tokens`` in :meth:`Calibration.describe` says how much was distinct).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.errors import QtuiError
from engine.typed import option

if TYPE_CHECKING:  # transformers is not analysed by mypy (follow_imports=skip): Any to it
    from transformers import PreTrainedTokenizerBase

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "calibration"
BUILTIN = "builtin"


class CalibrationError(QtuiError):
    """Calibration data could not be read or is unusable."""


@dataclass(frozen=True)
class CalibrationSpec:
    source: str = option(BUILTIN, '"builtin" or a path to a .txt / .jsonl file')
    samples: int = option(16, "calibration windows", min=1, max=4096)
    seq_len: int = option(256, "tokens per window", min=8, max=32768)


@dataclass
class Calibration:
    spec: CalibrationSpec
    ids: torch.Tensor  # long [samples, seq_len]
    unique_tokens: int
    documents: int
    sha256: str

    def describe(self) -> dict[str, object]:
        return {
            "source": self.spec.source,
            "samples": int(self.ids.shape[0]),
            "seq_len": int(self.ids.shape[1]),
            "tokens": int(self.ids.numel()),
            "unique_tokens": self.unique_tokens,
            "documents": self.documents,
            "sha256": self.sha256,
        }


def _chat_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        text: str = tokenizer.apply_chat_template(messages, tokenize=False)
        return text
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _jsonl_documents(path: Path, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    docs: list[str] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise CalibrationError(f"{path}: line {n} is not valid JSON ({exc})") from exc
        if isinstance(obj, dict) and "messages" in obj:
            docs.append(_chat_text(tokenizer, obj["messages"]))
        elif isinstance(obj, dict) and "prompt" in obj:
            msgs = [{"role": "user", "content": obj["prompt"]}]
            if obj.get("response"):
                msgs.append({"role": "assistant", "content": obj["response"]})
            docs.append(_chat_text(tokenizer, msgs))
        elif isinstance(obj, dict) and "text" in obj:
            docs.append(str(obj["text"]))
        else:
            raise CalibrationError(f"{path}: line {n} has none of 'messages', 'prompt', 'text'")
    return docs


def _txt_documents(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40]


def documents(source: str, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The texts of a calibration source, chat ones already rendered with the chat template."""
    if source == BUILTIN:
        return _jsonl_documents(ASSETS / "chat.jsonl", tokenizer) + _txt_documents(ASSETS / "prose.txt")
    path = Path(source).expanduser()
    if not path.is_file():
        raise CalibrationError(f"calibration file {source} not found")
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, tokenizer)
    return _txt_documents(path)


def build(spec: CalibrationSpec, tokenizer: PreTrainedTokenizerBase) -> Calibration:
    """Tokenize ``spec``'s source into ``[samples, seq_len]`` windows (interleaving the documents)."""
    if spec.samples < 1 or spec.seq_len < 8:
        raise CalibrationError("calibration needs at least 1 sample of at least 8 tokens")
    docs = documents(spec.source, tokenizer)
    if not docs:
        raise CalibrationError(f"calibration source {spec.source} holds no usable text")
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    # a fixed shuffle mixes chat and prose, so a short run still sees both kinds
    order = list(docs)
    random.Random(0).shuffle(order)
    stream: list[int] = []
    for doc in order:
        stream.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        stream.append(eos)
    need = spec.samples * spec.seq_len
    unique = min(len(stream), need)
    reps = -(-need // len(stream))
    ids = torch.tensor((stream * reps)[:need], dtype=torch.long).reshape(spec.samples, spec.seq_len)
    digest = hashlib.sha256("\x00".join(docs).encode("utf-8")).hexdigest()[:16]
    return Calibration(spec, ids, unique, len(docs), digest)
