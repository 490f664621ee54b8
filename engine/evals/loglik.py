"""Log-likelihood multiple choice, computed as lm-evaluation-harness does.

For each (context, continuation) the continuation's tokens are the tokens of ``context +
continuation`` after those of ``context``; its score is the sum of their log-probabilities.
``acc`` picks the highest sum, ``acc_norm`` the highest sum divided by the continuation's length
in characters. Pairs are batched: sorted by length, left-padded (positions follow the attention
mask), one forward per batch, and only the last positions' logits are computed.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.errors import Cancelled
from engine.progress import ProgressFn

if TYPE_CHECKING:  # transformers is not analysed by mypy (follow_imports=skip): Any to it
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Choice:
    logprob: float  # sum over the continuation's tokens
    n_tokens: int
    n_chars: int
    greedy: bool  # every continuation token was the model's argmax


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str
) -> tuple[list[int], list[int]]:
    n_space = len(context) - len(context.rstrip())  # lm-eval moves trailing spaces into the continuation
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    if whole[: len(ctx)] != ctx:  # context tokens merged with the continuation: keep tokenization separate
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        return ctx, cont
    return ctx, whole[len(ctx) :]


def _accepts(model: torch.nn.Module, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def score_pairs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[tuple[str, str]],
    batch_tokens: int = 4096,
    max_batch: int = 64,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> list[Choice]:
    """Score every (context, continuation) pair; returns one :class:`Choice` per pair, in order."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    # pairs whose continuation is one token and whose context is shared (BoolQ's " no" / " yes")
    # need one forward: the logits at the context's last position score all of them
    groups: dict[tuple[int | str, ...], list[int]] = {}  # (*tokens) or ("pair", index)
    targets: list[tuple[list[int], int, int]] = []  # per pair: (tokens, n_cont, n_chars)
    for idx, (ctx_text, cont_text) in enumerate(pairs):
        ctx, cont = encode_pair(tokenizer, ctx_text, cont_text)
        if not cont:
            raise ValueError(f"empty continuation for {cont_text!r}")
        bos = [tokenizer.bos_token_id] if not ctx and tokenizer.bos_token_id is not None else []
        targets.append((bos + ctx + cont, len(cont), len(cont_text)))
        key = tuple(bos + ctx) if len(cont) == 1 else ("pair", idx)
        groups.setdefault(key, []).append(idx)
    # one sequence per group: its first member's tokens; every member is scored from its logits
    seqs = [
        (targets[members[0]][0], max(targets[m][1] for m in members), members) for members in groups.values()
    ]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    keep_logits = _accepts(model, "logits_to_keep")
    results: list[Choice | None] = [None] * len(pairs)
    done, start = 0, 0
    while start < len(order):
        longest = len(seqs[order[start]][0])
        size = max(1, min(max_batch, batch_tokens // max(longest, 1)))
        batch = order[start : start + size]
        start += size
        if cancel is not None and cancel.is_set():
            raise Cancelled("evaluation cancelled")
        max_cont = max(seqs[i][1] for i in batch)
        ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, i in enumerate(batch):
            seq = seqs[i][0]
            ids[row, longest - len(seq) :] = torch.tensor(seq)
            mask[row, longest - len(seq) :] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": max_cont + 1} if keep_logits else {}
        with torch.inference_mode():
            logits = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=position_ids.to(device),
                **kwargs,
            ).logits
        logits = logits[:, -(max_cont + 1) : -1].float()  # predicts the last max_cont tokens
        logp = torch.log_softmax(logits, dim=-1).cpu()
        for row, i in enumerate(batch):
            for member in seqs[i][2]:
                seq, n_cont, n_chars = targets[member]
                target = torch.tensor(seq[-n_cont:])
                lp = logp[row, max_cont - n_cont :]
                chosen = lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                greedy = bool((lp.argmax(-1) == target).all())
                results[member] = Choice(float(chosen.sum()), n_cont, n_chars, greedy)
            done += len(seqs[i][2])
        if progress:
            progress(done, len(pairs), "log-likelihood")
    return results  # type: ignore[return-value]


def pick(choices: list[Choice]) -> tuple[int, int]:
    """(acc prediction, acc_norm prediction): argmax of sum log-prob, and of it per character."""
    acc = max(range(len(choices)), key=lambda j: choices[j].logprob)
    norm = max(range(len(choices)), key=lambda j: choices[j].logprob / max(choices[j].n_chars, 1))
    return acc, norm
