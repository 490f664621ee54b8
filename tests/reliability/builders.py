"""Inputs for the reliability catalogue: tiny random-weight models written as a HF folder and as a
real GGUF file, a model whose greedy answer is escape characters, and damaged copies of each."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from tests.helpers import EOS_ID, MERGES, SPECIALS, build_model, build_tokenizer

CONTEXT = 256  # max_position_embeddings of tests.helpers' models
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}  # fmt: skip


def save_folder(folder: Path, model=None, tokenizer=None) -> Path:
    """A HF model folder (config, safetensors, tokenizer) of a tiny llama."""
    model = model if model is not None else build_model("llama")
    (tokenizer or build_tokenizer()).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def write_gguf(path: Path, seed: int = 0) -> Path:
    """A real llama GGUF (float32 tensors, a byte-level BPE tokenizer) that transformers reads
    with ``gguf_file=``: what ``llama.cpp``'s converter would write for tests.helpers' llama."""
    from gguf import GGUFWriter, TokenType

    model, tok = build_model("llama", seed=seed), build_tokenizer()
    cfg = model.config
    w = GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    w.add_token_list(tokens)
    w.add_token_types([TokenType.CONTROL if t in SPECIALS else TokenType.NORMAL for t in tokens])
    w.add_token_merges([f"{a} {b}" for a, b in MERGES])
    w.add_eos_token_id(EOS_ID)
    w.add_chat_template(tok.chat_template)
    for key, t in model.state_dict().items():
        if key in TOP_NAMES:
            name = TOP_NAMES[key]
        else:  # model.layers.{i}.{module}.weight
            parts = key.split(".")
            name = f"blk.{parts[2]}.{GGUF_NAMES['.'.join(parts[3:-1])]}.weight"
        w.add_tensor(name, t.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def escape_model_folder(folder: Path) -> Path:
    """A model whose greedy answer is ESC characters: its tokenizer puts the byte 0x1b at id 0 and
    its LM head is zero, so every logit ties and argmax takes id 0."""
    from tokenizers import pre_tokenizers

    tok = build_tokenizer()
    esc = _byte_char(0x1B)
    data = json.loads(tok.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    first = next(t for t, i in vocab.items() if i == 0)
    vocab[first], vocab[esc] = vocab[esc], 0
    assert esc in pre_tokenizers.ByteLevel.alphabet()
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    swapped = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        unk_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
    )  # fmt: skip
    swapped.chat_template = tok.chat_template
    model = build_model("llama")
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return save_folder(folder, model, swapped)


def _byte_char(b: int) -> str:
    """The character GPT-2's byte-level alphabet uses for byte ``b``."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    if b in printable:
        return chr(b)
    return chr(256 + [x for x in range(256) if x not in printable].index(b))


def nan_model_folder(folder: Path) -> Path:
    """A model whose embeddings hold NaN: GPTQ's Hessian can never be positive definite."""
    model = build_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = float("nan")
    return save_folder(folder, model)


# ------------------------------------------------------------------------------ damage
def flip_byte(path: Path, from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[-from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


def edit_manifest(folder: Path, edit) -> None:
    path = folder / "qtui-manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def random_bytes(path: Path, n: int, prefix: bytes = b"") -> Path:
    path.write_bytes(prefix + os.urandom(n))
    return path
