"""Token-level divergence of a variant from the baseline, on the baseline's own answer.

After the baseline has answered, its answer is fed (teacher-forced) through both models with the
same prompt; at every position of the answer the two next-token distributions are compared: the
KL divergence KL(baseline || variant) (as llama.cpp's perplexity tool and
:mod:`engine.evals.fidelity` measure it, here over the baseline's top-k tokens plus a rest bucket)
and the probability the variant gave to the token the baseline chose. The first position whose KLD
passes a threshold is where the variant starts to depart: what a reader should look at first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from engine.errors import Cancelled
from engine.evals.fidelity import _logprobs, kld_topk
from engine.runtime import Message, Variant, chat_ids

THRESHOLD = 0.5  # nats: a position past it is where the variant "departs" (int4: mostly < 0.1)
TOP_K = 4096  # as engine.evals.fidelity: >= 99% of the full-vocabulary KLD on the default model


@dataclass(frozen=True)
class TokenDivergence:
    index: int
    token_id: int
    text: str  # the text this baseline token adds
    kld: float  # KL(baseline || variant) of the next-token distributions before this token
    p_variant: float  # the probability the variant gave to this (the baseline's) token
    p_baseline: float  # ... and the baseline itself
    variant_top: bool  # this token is also the variant's most likely next token


@dataclass(frozen=True)
class Divergence:
    variant: str
    baseline: str
    tokens: tuple[TokenDivergence, ...]
    threshold: float
    first_over: int | None  # index of the first token whose KLD passes the threshold

    @property
    def mean_kld(self) -> float:
        return sum(t.kld for t in self.tokens) / len(self.tokens) if self.tokens else 0.0

    @property
    def max_kld(self) -> float:
        return max((t.kld for t in self.tokens), default=0.0)

    @property
    def top1_agreement(self) -> float:
        return sum(t.variant_top for t in self.tokens) / len(self.tokens) if self.tokens else 1.0


def token_texts(variant: Variant, ids: list[int]) -> list[str]:
    """The text each token adds, decoded in context (multi-byte characters stay whole)."""
    out, prev = [], ""
    for i in range(len(ids)):
        text: str = variant.tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        out.append(text[len(prev) :] if text.startswith(prev) else text)
        prev = text
    return out


def divergence(
    baseline: Variant,
    variant: Variant,
    messages: list[Message],
    answer_ids: list[int],
    system: str | None = None,
    threshold: float = THRESHOLD,
    cancel: threading.Event | None = None,
) -> Divergence:
    """Per-token divergence of ``variant`` from ``baseline`` on the baseline's answer
    ``answer_ids`` to ``messages`` (the conversation up to and including the user's prompt)."""
    prompt = chat_ids(baseline.tokenizer, messages, system)[0]
    answer = torch.tensor(answer_ids, dtype=torch.long)
    if answer.numel() == 0:
        return Divergence(variant.name, baseline.name, (), threshold, None)
    window = torch.cat([prompt, answer, answer[-1:]])  # _logprobs drops the last id (its target)
    start = prompt.numel() - 1  # the position that predicts the first answer token
    logp = {}
    for key, v in (("base", baseline), ("variant", variant)):
        if cancel is not None and cancel.is_set():
            raise Cancelled("divergence cancelled")
        logp[key] = _logprobs(v.model, window)[start : start + answer.numel()]
    base, other = logp["base"], logp["variant"]
    k = min(TOP_K, base.shape[-1])
    top_logp, top_ids = base.topk(k, dim=-1)
    kld = kld_topk(top_ids, top_logp, other)
    idx = answer.unsqueeze(-1)
    p_var = other.gather(-1, idx).squeeze(-1).exp()
    p_base = base.gather(-1, idx).squeeze(-1).exp()
    agree = other.argmax(-1) == answer
    texts = token_texts(baseline, answer_ids)
    tokens = tuple(
        TokenDivergence(i, int(answer_ids[i]), texts[i], round(float(kld[i]), 5), round(float(p_var[i]), 5),
                        round(float(p_base[i]), 5), bool(agree[i]))
        for i in range(len(answer_ids))
    )  # fmt: skip
    first = next((t.index for t in tokens if t.kld > threshold), None)
    return Divergence(variant.name, baseline.name, tokens, threshold, first)
