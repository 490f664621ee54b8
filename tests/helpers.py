"""Helpers the tests import: tiny random-weight models, a tiny tokenizer, Pilot waits.

Fixtures stay in the conftest files (pytest finds them there); what a test module imports by name
lives here, so no test imports a conftest.
"""

from __future__ import annotations

import torch

# A byte-level BPE tokenizer (GPT-2 / Qwen style): 256 byte symbols, 12 merges, 4 special tokens.
# Byte-level matters: for model_type qwen2, transformers' AutoTokenizer rebuilds the tokenizer as a
# Qwen2Tokenizer (byte-level BPE) from tokenizer.json's vocab and merges, so only a tokenizer of
# that kind survives save_pretrained -> AutoTokenizer.from_pretrained unchanged for every arch.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
MERGES = [
    ("h", "e"),
    ("l", "l"),
    ("he", "ll"),
    ("\u0120", "w"),
    ("o", "r"),
    ("\u0120", "t"),
    ("\u0120t", "h"),
    ("i", "s"),
    ("\u0120", "a"),
    ("e", "r"),
    ("i", "n"),
    ("o", "u"),
]
SPECIALS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"]
VOCAB_SIZE = 256 + len(MERGES) + len(SPECIALS)  # 272, a multiple of 16 (int4 kernel rows)
EOS_ID = 256 + len(MERGES)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# arch -> config kwargs. Hidden sizes 96/64 are not multiples of 128 (and 96 is not one of 64), so
# group-wise formats pad; qwen2 ties its embeddings and has q/k/v biases.
ARCHS = {
    "llama": dict(hidden_size=96, intermediate_size=160, tie_word_embeddings=False),
    "qwen2": dict(hidden_size=64, intermediate_size=192, tie_word_embeddings=True),
    "qwen3": dict(hidden_size=64, intermediate_size=160, head_dim=16, tie_word_embeddings=False),
    # the families discovered by engine.quant.arch (tests/unit/test_arch.py): sliding windows
    # shorter than the test inputs, Gemma's (1 + w) norms, soft-capping and pre/post-feedforward
    # norms, Phi-3's fused qkv_proj / gate_up_proj, Granite's multipliers, OLMo-2's post-norms
    "mistral": dict(hidden_size=64, intermediate_size=128, sliding_window=8, tie_word_embeddings=False),
    "gemma2": dict(
        hidden_size=64, intermediate_size=128, head_dim=16, query_pre_attn_scalar=16, sliding_window=8
    ),
    "gemma3_text": dict(
        hidden_size=64,
        intermediate_size=128,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
    ),
    "phi3": dict(hidden_size=64, intermediate_size=128, tie_word_embeddings=False),
    "smollm3": dict(hidden_size=64, intermediate_size=128, tie_word_embeddings=True),
    "granite": dict(
        hidden_size=64,
        intermediate_size=128,
        embedding_multiplier=4.0,
        residual_multiplier=0.5,
        attention_multiplier=0.25,
        logits_scaling=2.0,
        tie_word_embeddings=True,
    ),
    "olmo2": dict(hidden_size=64, intermediate_size=128, tie_word_embeddings=False),
}


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    for special in SPECIALS:
        vocab[special] = len(vocab)
    assert len(vocab) == VOCAB_SIZE and vocab["<|endoftext|>"] == EOS_ID
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=MERGES, continuing_subword_prefix="", end_of_word_suffix="")
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(arch: str, seed: int = 0, tie: bool | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(ARCHS[arch])
    if tie is not None:
        kwargs["tie_word_embeddings"] = tie
    config = AutoConfig.for_model(
        arch,
        vocab_size=VOCAB_SIZE,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        **kwargs,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        # transformers initialises biases to 0 and norms to 1: make them non-trivial so saving,
        # loading and the bias path of the kernels are really exercised
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
        # a zero row makes the EOS logit exactly 0, so greedy decoding of a random model never
        # picks it (some other of the 271 logits is positive) and runs to max_new_tokens
        model.get_output_embeddings().weight[EOS_ID].zero_()
    model.generation_config.eos_token_id = EOS_ID
    return model


async def until(pilot, condition, timeout: float = 10.0) -> None:
    """Let the app run until ``condition()`` holds (workers finish, messages drain)."""
    import time

    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.02)


def formats_ready(app) -> bool:
    """The Models screen's format picker shows the expected sizes."""
    picker = app.screen.query("#formats")
    if not picker:
        return False
    options = [str(picker.first().get_option_at_index(i).prompt) for i in range(picker.first().option_count)]
    return any("114.8 MB" in text for text in options)


def quantize_saved(
    loaded,
    fmt,
    method="rtn",
    out=None,
    options=None,
    params=None,
    progress=None,
    cancel=None,
    overwrite=False,
    calibration=None,
):
    """``variants.quantize_and_save`` for a source already loaded in a test: builds the request
    as the CLI does and returns ``(folder, report)``."""
    from engine import variants
    from engine.request import QuantRequest

    request = QuantRequest.build(
        loaded.source, fmt, method, params, calibration, options, "cpu", out, overwrite=overwrite
    )
    saved = variants.quantize_and_save(request, progress, cancel, loaded=loaded)
    return saved.path, saved.report
