"""Streaming generation: tokens, timings, finish reasons, cancellation, sampling, flags."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from engine.quant.formats import get_format
from engine.quant.methods import get_method
from engine.quant.pipeline import quantize_model
from engine.runtime import (
    GenResult,
    GenSettings,
    Token,
    _sample,
    chat_ids,
    detect_loop,
    eos_ids,
    generate,
    stream,
    variant_from_model,
)

PROMPT = "hello world, what is the answer?"


@pytest.fixture(scope="module")
def base_model(tiny_model):
    return tiny_model("llama")


@pytest.fixture
def variant(base_model):
    model, tok = base_model
    return variant_from_model("bf16", copy.deepcopy(model), tok, get_format("bf16"), device="cpu")


def count_forwards(model) -> list[int]:
    calls = [0]

    def hook(module, args, kwargs):
        calls[0] += 1

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


# ------------------------------------------------------------------------------ detect_loop
@pytest.mark.parametrize(
    "ids, looped",
    [
        ([], False),
        ([7] * 23, False),  # shorter than min_span
        ([7] * 24, True),
        (list(range(40)) + [7] * 24, True),
        (list(range(40)) + [7] * 23, False),
        (list(range(40)) + [1, 2, 3] * 8, True),
        (list(range(10)) + [1, 2, 3] * 7 + [1, 2], False),  # 23 tokens of the pattern
        (list(range(100)), False),
        (list(range(30)) * 3, True),  # period 30 x 3 = 90 >= 24
        (list(range(70)) * 3, False),  # period 70 > max_period
        (list(range(10)) * 2 + [5], False),  # only twice
        (list(range(50)) + [4, 5] * 12 + [9], False),  # the tail breaks the pattern
    ],
)
def test_detect_loop(ids, looped):
    assert detect_loop(ids) is looped


def test_detect_loop_parameters():
    assert detect_loop([1, 2] * 4, min_span=8)
    assert not detect_loop([1, 2] * 4)
    assert detect_loop(list(range(70)) * 3, max_period=70)
    assert not detect_loop([1, 2] * 12, repeats=13)


# ------------------------------------------------------------------------------ GenResult
def test_gen_result_flags():
    assert GenResult(finish="length").flags == ["max-tokens"]
    assert GenResult(finish="length", looped=True).flags == ["loop", "max-tokens"]
    assert GenResult(finish="eos", text="  \n").flags == ["empty"]
    assert GenResult(finish="eos", text="hi").flags == []
    stopped = GenResult(finish="stopped", text="")
    assert stopped.flags == [] and stopped.stopped and not stopped.hit_limit
    assert GenResult(finish="length").hit_limit


# ------------------------------------------------------------------------------ stream
def test_stream_yields_tokens_then_result(variant):
    calls = count_forwards(variant.model)
    gen = stream(variant, PROMPT, GenSettings(max_new_tokens=6))
    tokens: list[Token] = []
    while True:
        try:
            tokens.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert isinstance(result, GenResult)
    assert [t.index for t in tokens] == list(range(6))
    assert [t.token_id for t in tokens] == result.token_ids
    assert all(0 <= t.token_id < 272 for t in tokens)
    assert all(a.t <= b.t for a, b in zip(tokens, tokens[1:], strict=False))
    assert "".join(t.text for t in tokens) == result.text
    # byte-level tokens: only complete characters are emitted, so at most an unfinished UTF-8
    # sequence at the very end (decoded as U+FFFD) is left out of the text
    full = variant.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    assert full.startswith(result.text) and set(full[len(result.text) :]) <= {"\ufffd"}
    assert result.new_tokens == 6 and result.finish == "length" and result.hit_limit
    assert "max-tokens" in result.flags
    assert result.prompt_tokens == chat_ids(variant.tokenizer, PROMPT).shape[1]
    assert result.ttft_s > 0 and result.ttft_s == tokens[0].t
    assert result.total_s >= result.ttft_s
    assert result.prefill_tps == pytest.approx(result.prompt_tokens / result.ttft_s)
    assert result.decode_tps > 0
    assert result.peak_rss > 0 and result.peak_cuda == 0
    assert result.looped == detect_loop(result.token_ids)
    assert calls[0] == 6  # one prefill + one forward per further token, none wasted


def test_generate_matches_stream_and_calls_on_token(variant):
    seen: list[Token] = []
    result = generate(variant, PROMPT, GenSettings(max_new_tokens=5), on_token=seen.append)
    assert [t.token_id for t in seen] == result.token_ids and len(seen) == 5
    again = generate(variant, PROMPT, GenSettings(max_new_tokens=5))
    assert again.token_ids == result.token_ids  # greedy is deterministic


def test_greedy_is_argmax_of_full_forward(variant):
    result = generate(variant, PROMPT, GenSettings(max_new_tokens=4))
    ids = chat_ids(variant.tokenizer, PROMPT)
    with torch.inference_mode():
        for token in result.token_ids:
            logits = variant.model(input_ids=ids).logits[0, -1]
            # the cached decode picks the argmax of a full recompute (up to bf16 rounding)
            assert float(logits[token]) >= float(logits.max()) - 0.02
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)


def test_cancel_after_second_token_stops_at_once(variant):
    cancel = threading.Event()
    calls = count_forwards(variant.model)

    def on_token(token: Token):
        if token.index == 1:
            cancel.set()

    result = generate(variant, PROMPT, GenSettings(max_new_tokens=50), on_token=on_token, cancel=cancel)
    assert result.finish == "stopped" and result.stopped
    assert result.new_tokens == 2 and len(result.token_ids) == 2
    assert calls[0] == 2  # no forward after the cancel
    assert "max-tokens" not in result.flags


def test_eos_finishes_without_emitting_it(variant):
    greedy = generate(variant, PROMPT, GenSettings(max_new_tokens=8)).token_ids
    assert eos_ids(variant) == {268}
    k = next(i for i in range(1, 8) if greedy[i] not in greedy[:i])
    variant.model.generation_config.eos_token_id = [268, greedy[k]]
    assert greedy[k] in eos_ids(variant)
    result = generate(variant, PROMPT, GenSettings(max_new_tokens=8))
    assert result.finish == "eos" and result.token_ids == greedy[:k]
    assert "max-tokens" not in result.flags


def test_eos_first_is_flagged_empty(variant):
    first = generate(variant, PROMPT, GenSettings(max_new_tokens=1)).token_ids[0]
    variant.model.generation_config.eos_token_id = first
    result = generate(variant, PROMPT, GenSettings(max_new_tokens=8))
    assert result.finish == "eos" and result.new_tokens == 0 and result.text == ""
    assert result.flags == ["empty"]
    assert result.ttft_s > 0 and result.decode_tps == 0.0


def test_system_prompt_and_message_lists(variant):
    tok = variant.tokenizer
    plain = chat_ids(tok, PROMPT)
    with_system = chat_ids(tok, PROMPT, system="be brief")
    assert with_system.shape[1] > plain.shape[1]
    assert int(with_system[0, 0]) == tok.convert_tokens_to_ids("<|system|>")
    assert int(plain[0, 0]) == tok.convert_tokens_to_ids("<|user|>")
    assert int(plain[0, -1]) == tok.convert_tokens_to_ids("<|assistant|>")
    messages = [{"role": "user", "content": PROMPT}]
    assert torch.equal(chat_ids(tok, messages), plain)
    result = generate(variant, PROMPT, GenSettings(max_new_tokens=3, system="be brief"))
    assert result.prompt_tokens == with_system.shape[1]


# ------------------------------------------------------------------------------ sampling
def test_temperature_sampling_is_reproducible_with_a_seed(variant):
    hot = GenSettings(max_new_tokens=12, temperature=1.0, seed=123)
    a = generate(variant, PROMPT, hot)
    b = generate(variant, PROMPT, hot)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 12
    other = generate(variant, PROMPT, GenSettings(max_new_tokens=12, temperature=1.0, seed=124))
    greedy = generate(variant, PROMPT, GenSettings(max_new_tokens=12))
    # a random tiny model's distribution is nearly flat: other seeds and greedy differ
    assert other.token_ids != a.token_ids
    assert greedy.token_ids != a.token_ids
    nucleus = GenSettings(max_new_tokens=12, temperature=0.8, top_p=0.5, seed=7)
    assert generate(variant, PROMPT, nucleus).token_ids == generate(variant, PROMPT, nucleus).token_ids


def test_sample_rules():
    logits = torch.tensor([0.0, 5.0, 1.0, 4.9])
    assert _sample(logits, GenSettings(), None) == 1  # greedy
    gen = torch.Generator().manual_seed(0)
    # top_p keeps the smallest set reaching p: the top token alone holds > 50% here
    picks = {_sample(logits, GenSettings(temperature=1.0, top_p=0.3), gen) for _ in range(50)}
    assert picks == {1}
    picks = {_sample(logits, GenSettings(temperature=1.0, top_p=0.9), gen) for _ in range(200)}
    assert picks == {1, 3}
    picks = {_sample(logits, GenSettings(temperature=100.0), gen) for _ in range(400)}
    assert picks == {0, 1, 2, 3}


def test_variant_reports_backend_and_weight_bytes(variant, base_model):
    assert variant.backend == "dense bfloat16 (torch matmul)"
    model, _ = base_model
    n_params = sum(p.numel() for p in model.parameters())
    assert variant.weight_bytes() >= n_params * 2  # bf16
    fmt = get_format("int4-g64")
    qmodel = copy.deepcopy(model)
    quantize_model(qmodel, fmt, get_method("rtn"))
    q = variant_from_model("int4", qmodel, variant.tokenizer, fmt, device="cpu")
    assert q.backends == {"int4pack (torch tinygemm int4 kernel)": 14}
    assert q.backend == "int4pack (torch tinygemm int4 kernel)"
    assert q.dtype == torch.bfloat16
    assert 0 < q.weight_bytes() < variant.weight_bytes()
    q.warm_up()
    assert q.warmed  # a no-op on CPU


def test_variants_with_the_same_tokenizer_files_share_one_tokenizer(tmp_path, tiny_tokenizer):
    from engine.runtime import shared_tokenizer

    for name in ("a", "b"):
        tiny_tokenizer.save_pretrained(tmp_path / name)
    assert shared_tokenizer(tmp_path / "a") is shared_tokenizer(tmp_path / "b")
    (tmp_path / "b" / "tokenizer_config.json").write_text(
        (tmp_path / "b" / "tokenizer_config.json").read_text().replace("}", ', "model_max_length": 7}', 1)
    )
    assert shared_tokenizer(tmp_path / "a") is not shared_tokenizer(tmp_path / "b")


def test_lm_head_gets_a_row_major_input_in_the_prefill(variant):
    """The prefill keeps the last position only: a [1, 1, d] slice with the batch stride of the
    whole prompt, on which CPU bf16 matmul is ~100x slower. The head must see plain strides."""
    from engine.runtime import decode_token_ids

    seen: list[tuple[int, ...]] = []
    head = variant.model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].stride()) or None)
    try:
        ids = torch.arange(3, 12).unsqueeze(0)
        tokens = decode_token_ids(variant, ids, GenSettings(max_new_tokens=2), None, None)
        next(tokens)
        tokens.close()
    finally:
        handle.remove()
    d = head.in_features
    assert seen == [(d, d, 1)]
    # registering again (a variant re-prepared) does not stack a second hook
    before = len(head._forward_pre_hooks)
    variant_from_model("again", variant.model, variant.tokenizer, variant.fmt, device="cpu")
    assert len(head._forward_pre_hooks) == before
