"""Batched greedy generation for evaluation: left padding, attention mask, dynamic KV cache.

All prompts of a batch are prefilled in one forward; each decode step is one forward for the
whole batch. A row stops at EOS, at ``max_new_tokens`` or, with ``stop_on_loop``, once its tail
repeats (:func:`engine.runtime.detect_loop`); the batch stops when every row has.
"""

from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass
from typing import Literal

import torch

from engine.errors import Cancelled
from engine.runtime import Variant, chat_ids, detect_loop, eos_ids

BatchFinish = Literal["eos", "length", "loop"]  # EOS token, max_new_tokens reached, a repeating tail


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish: BatchFinish
    looped: bool
    seconds: float  # this row's share of the batch time (batch time / rows)
    batch_seconds: float
    batch_size: int


def generate_batch(
    variant: Variant,
    prompts: list[str],
    max_new_tokens: int = 256,
    system: str | None = None,
    stop_on_loop: bool = True,
    cancel: threading.Event | None = None,
) -> list[Generation]:
    from transformers import DynamicCache

    model, tok = variant.model, variant.tokenizer
    device = variant.device
    encoded = [chat_ids(tok, p, system)[0].tolist() for p in prompts]
    n, longest = len(encoded), max(len(e) for e in encoded)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ids = torch.full((n, longest), pad, dtype=torch.long)
    mask = torch.zeros((n, longest), dtype=torch.long)
    for row, seq in enumerate(encoded):
        ids[row, longest - len(seq) :] = torch.tensor(seq)
        mask[row, longest - len(seq) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    kwargs = {cache_arg: DynamicCache(config=model.config), "use_cache": True}
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1
    stops = torch.tensor(sorted(eos_ids(variant)), device=device)
    out_ids: list[list[int]] = [[] for _ in range(n)]
    finish: list[BatchFinish | Literal[""]] = [""] * n  # "": still generating
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        for step in range(max_new_tokens):
            if cancel is not None and cancel.is_set():
                raise Cancelled("evaluation cancelled")
            nxt = out.logits[:, -1].argmax(-1)
            is_stop = torch.isin(nxt, stops).tolist()
            for row, token in enumerate(nxt.tolist()):
                if finish[row]:
                    continue
                if is_stop[row]:
                    finish[row] = "eos"
                    continue
                out_ids[row].append(token)
                if len(out_ids[row]) >= max_new_tokens:
                    finish[row] = "length"
                elif stop_on_loop and step % 8 == 7 and detect_loop(out_ids[row]):
                    finish[row] = "loop"
            if all(finish):
                break
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            out = model(input_ids=nxt.unsqueeze(-1), attention_mask=mask, position_ids=positions, **kwargs)
    elapsed = time.perf_counter() - t0
    return [
        Generation(
            text=tok.decode(out_ids[r], skip_special_tokens=True),
            token_ids=out_ids[r],
            prompt_tokens=len(encoded[r]),
            finish=finish[r] or "length",
            looped=finish[r] == "loop" or detect_loop(out_ids[r]),
            seconds=elapsed / n,
            batch_seconds=elapsed,
            batch_size=n,
        )
        for r in range(n)
    ]
