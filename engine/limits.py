"""Checks made before long work starts: what a run asks for against what the model and the files allow.

A calibration window or a prompt plus its answer longer than the model's context, a generation limit
no model could reach, a binary file given as text: each is one clear :class:`LimitError` before any
time is spent, rather than minutes of work that end in garbage or a traceback.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import QtuiError

if TYPE_CHECKING:
    from engine.runtime import GenSettings, Message, Variant

CONTEXT_ATTRS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class LimitError(QtuiError):
    """A request that exceeds what the model or the input files allow."""


def model_context(config: object) -> int | None:
    """The longest sequence (tokens) the model was built for, when its config says; None if not."""
    for cfg in (config, getattr(config, "text_config", None)):
        for attr in CONTEXT_ATTRS:
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def check_seq_len(seq_len: int, config: object, flag: str = "--seq-len") -> None:
    """Calibration windows must fit the model's context (positions past it are untrained)."""
    ctx = model_context(config)
    if ctx is not None and seq_len > ctx:
        raise LimitError(
            f"{flag} {seq_len} is longer than the model's context ({ctx} tokens); use {ctx} or less"
        )


def check_generation(
    prompt_tokens: int, max_new_tokens: int, config: object, flag: str = "--max-tokens"
) -> None:
    """A prompt and the answer it may get must fit the model's context together (``flag`` is
    what the user sets the answer limit with)."""
    ctx = model_context(config)
    if ctx is None:
        return
    if prompt_tokens >= ctx:
        raise LimitError(
            f"the prompt is {prompt_tokens} tokens, as long as the model's context ({ctx} tokens) "
            "or longer; shorten it"
        )
    if prompt_tokens + max_new_tokens > ctx:
        raise LimitError(
            f"{flag} {max_new_tokens} plus the prompt's {prompt_tokens} tokens is more than the "
            f"model's context ({ctx} tokens); use {flag} {ctx - prompt_tokens} or less"
        )


def check_prompt(
    variant: Variant, prompt: str | list[Message], settings: GenSettings, flag: str = "--max-tokens"
) -> None:
    """:func:`check_generation` for ``prompt`` (a text or a conversation) as ``variant`` will see
    it, chat template included."""
    from engine.runtime import chat_ids

    n = int(chat_ids(variant.tokenizer, prompt, settings.system).shape[1])
    check_generation(n, settings.max_new_tokens, variant.model.config, flag)


def check_text_file(path: Path, what: str) -> None:
    """``path`` is a readable UTF-8 text file (no NUL bytes): a binary file given where text is
    expected is refused with one line naming the first bad byte."""
    path = Path(path)
    if not path.is_file():
        raise LimitError(f"{what} {path} not found")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                nul = chunk.find(b"\x00")
                if nul >= 0:
                    raise LimitError(
                        f"{what} {path} is a binary file (a NUL byte at offset {offset + nul}), not text"
                    )
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    raise LimitError(
                        f"{what} {path} is not UTF-8 text (byte {offset + exc.start}); give a text file"
                    ) from None
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise LimitError(f"{what} {path} ends in the middle of a UTF-8 character; not text") from None
    except OSError as exc:
        raise LimitError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
