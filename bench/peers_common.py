"""Shared by bench/methods_vs_peers.py and bench/peers_worker.py (which runs inside a peer's own
virtual environment): only torch, so it imports anywhere.

``decode_tok_s`` is the one decode loop every row of the peers table is timed with (qtui's rows
too), so the tokens/s column compares kernels, not generation loops: greedy, one token per
forward, transformers' KV cache, only the last position's logits used.
"""

from __future__ import annotations

import time

import torch


def hf_model(obj):
    """The transformers model inside a peer's wrapper (GPTQModel wraps it in ``.model``); a
    transformers model itself (whose ``.model`` is the headless decoder) is returned as it is."""
    from transformers import PreTrainedModel

    if isinstance(obj, PreTrainedModel):
        return obj
    inner = getattr(obj, "model", None)
    return inner if isinstance(inner, torch.nn.Module) else obj


@torch.inference_mode()
def decode_tok_s(model, prompt_ids: torch.Tensor, new_tokens: int = 64, repeats: int = 3) -> float:
    """Median decode tokens/s over ``repeats`` runs of ``new_tokens`` greedy tokens after a prompt."""
    device = next(model.parameters()).device
    prompt = prompt_ids.view(1, -1).to(device)
    speeds = []
    for r in range(repeats + 1):  # the first run warms up and is not counted
        out = model(input_ids=prompt, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        if r:
            speeds.append(new_tokens / (time.perf_counter() - t0))
    return sorted(speeds)[len(speeds) // 2]
