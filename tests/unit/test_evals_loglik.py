"""Batched log-likelihood scoring equals a brute-force per-choice computation."""

from __future__ import annotations

import pytest
import torch

from engine.evals.loglik import encode_pair, pick, score_pairs

PAIRS = [
    ("Question: what is hot?\nAnswer:", " the sun"),
    ("Question: what is hot?\nAnswer:", " ice"),
    ("Question: what is hot?\nAnswer:", " a very cold winter night"),
    ("The sky is", " blue"),
    ("A much longer context that needs more tokens than the others do, for padding.", " yes"),
    ("A much longer context that needs more tokens than the others do, for padding.", " no"),
    ("Ends with a space ", "x"),  # lm-eval moves the trailing space into the continuation
    ("Pick a digit: 4", "1"),  # one-token continuations of one context: scored from one forward
    ("Pick a digit: 4", "2"),
    ("Pick a digit: 4", "7"),
]


def brute_force(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    ctx, cont = encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    total, greedy = 0.0, True
    for j, token in enumerate(cont):
        row = logp[len(ctx) + j - 1]
        total += float(row[token])
        greedy &= int(row.argmax()) == token
    return total, greedy


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("batch_tokens", [64, 4096])  # many small batches / one padded batch
def test_batched_scores_match_brute_force(tiny_model, arch, batch_tokens):
    model, tok = tiny_model(arch)
    got = score_pairs(model, tok, PAIRS, batch_tokens=batch_tokens)
    for (context, continuation), choice in zip(PAIRS, got, strict=True):
        expected, greedy = brute_force(model, tok, context, continuation)
        assert choice.logprob == pytest.approx(expected, abs=1e-4)
        assert choice.greedy == greedy
        assert choice.n_chars == len(continuation)
        assert choice.n_tokens == len(encode_pair(tok, context, continuation)[1])


def test_one_token_continuations_share_a_forward(tiny_model):
    from tests.helpers import build_tokenizer

    tok = build_tokenizer()
    assert all(len(encode_pair(tok, "Pick a digit: 4", d)[1]) == 1 for d in "127")
    model, _ = tiny_model("llama")
    calls = []
    handle = model.register_forward_hook(lambda m, a, k: calls.append(1))
    try:
        score_pairs(model, tok, [("Pick a digit: 4", d) for d in "127"])
    finally:
        handle.remove()
    assert len(calls) == 1


def test_encode_pair_moves_trailing_space():
    from tests.helpers import build_tokenizer

    tok = build_tokenizer()
    ctx, cont = encode_pair(tok, "Answer: ", "yes")
    assert tok.decode(ctx) == "Answer:" and tok.decode(cont) == " yes"


def test_pick_acc_and_acc_norm():
    from engine.evals.loglik import Choice

    choices = [Choice(-4.0, 2, 2, False), Choice(-6.0, 5, 20, False)]
    assert pick(choices) == (0, 1)  # raw sum prefers the short one, per-character the long one


def test_quantized_model_scores_batched(tiny_model):
    """QLinear kernels take the batched 3-D input: int8 scores stay close to the float model's."""
    import copy

    from engine.quant.formats import get_format
    from engine.quant.methods import get_method
    from engine.quant.pipeline import QuantOptions, prepare_model, quantize_model

    model, tok = tiny_model("llama")
    q = copy.deepcopy(model)
    quantize_model(q, get_format("int8"), get_method("rtn"), None, QuantOptions())
    prepare_model(q, torch.device("cpu"), torch.float32, None)
    ref = score_pairs(model, tok, PAIRS)
    got = score_pairs(q, tok, PAIRS)
    assert [round(c.logprob, 1) for c in got] == pytest.approx([round(c.logprob, 1) for c in ref], abs=0.3)
