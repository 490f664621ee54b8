"""A tiny llama model as a GGUF *source*: the metadata llama.cpp's converter writes (architecture,
gpt2-style tokenizer from tests.helpers, chat template), so a variant of it exports to a GGUF that
llama.cpp loads. Tests import :func:`gguf_source`."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import CHAT_TEMPLATE, EOS_ID, MERGES, SPECIALS, build_model, build_tokenizer


def write_source_gguf(path: Path, model) -> Path:
    """Metadata only (no tensors): what export reads from a source GGUF."""
    from gguf import GGUFWriter, TokenType

    cfg = model.config
    tok = build_tokenizer()
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([TokenType.CONTROL if t in SPECIALS else TokenType.NORMAL for t, _ in vocab])
    w.add_token_merges([f"{a} {b}" for a, b in MERGES])
    w.add_bos_token_id(EOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_source(folder: Path, seed: int = 0):
    """A ``sources.LoadedSource`` of kind ``gguf`` around a tiny llama model, its GGUF in ``folder``."""
    from engine import sources

    model, tok = build_model("llama", seed), build_tokenizer()
    path = write_source_gguf(folder / "tiny-llama.gguf", model)
    src = sources.ModelSource("gguf", str(path), path, path.name)
    return sources.LoadedSource(src, folder, model, tok, sources.content_hash(path))
