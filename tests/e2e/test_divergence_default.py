"""Token divergence on the real default model: int2-g64 departs from bf16 at once (its first token
past 0.5 nats is marked), int4-g64 stays close on most tokens."""

from __future__ import annotations

import pytest

from engine import divergence, variants
from engine.runtime import GenSettings, generate

pytestmark = pytest.mark.e2e

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def test_int2_marks_its_first_departing_token(default_loaded, real_cache):
    cache = {"default": default_loaded}
    base = variants.open_spec("default", "cpu", loaded_cache=cache)
    int2 = variants.open_spec("default:int2-g64", "cpu", loaded_cache=cache)
    int4 = variants.open_spec("default:int4-g64", "cpu", loaded_cache=cache)
    answer = generate(base, PROMPT, GenSettings(max_new_tokens=16)).token_ids
    d2 = divergence.divergence(base, int2, PROMPT, answer)
    d4 = divergence.divergence(base, int4, PROMPT, answer)
    assert d2.first_over is not None
    assert d2.first_over == next(t.index for t in d2.tokens if t.kld > divergence.THRESHOLD)
    assert d2.mean_kld > 1.0 and d2.top1_agreement < 0.5  # garbage at 2 bits, as expected
    assert d4.mean_kld < d2.mean_kld / 10 and d4.top1_agreement >= 0.7
