"""GGUF reading on a tiny float32 llama GGUF written here with llama.cpp's q/k permutation."""

import dataclasses

import jax
import numpy as np
import pytest

from gbmpo_jax import models
from gbmpo_jax.models import hf_io

gguf = pytest.importorskip("gguf")

CFG = models.ModelConfig(
    "llama",
    40,
    32,
    48,
    2,
    4,
    2,
    8,
    rope_theta=5000.0,
    rms_norm_eps=2.0**-17,  # exact in float32, as GGUF stores it
    max_position_embeddings=64,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _llamacpp_permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute (HF rotate-half rows -> interleaved)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _write_gguf(path, model, arch="llama"):
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_heads)
    w.add_head_count_kv(c.num_kv_heads)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, arr in hf_io.hf_from_params(c, jax.device_get(model.params)):
        arr = np.ascontiguousarray(arr, np.float32)
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            layer, rest = name.split(".")[2], ".".join(name.split(".")[3:])
            module, kind = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{NAMES[module]}.{kind}"
            if module == "self_attn.q_proj":
                arr = _llamacpp_permute(arr, c.num_heads)
            elif module == "self_attn.k_proj":
                arr = _llamacpp_permute(arr, c.num_kv_heads)
        w.add_tensor(gname, np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_load_undoes_llamacpp_permutation(tmp_path):
    model = models.init_model(CFG, jax.random.key(0))
    path = _write_gguf(tmp_path / "tiny.gguf", model)
    loaded = models.load_pretrained(path)
    assert loaded.config == CFG
    jax.tree.map(np.testing.assert_array_equal, loaded.params, model.params)
    ids = np.arange(12).reshape(2, 6) % CFG.vocab_size
    np.testing.assert_array_equal(models.forward(loaded, ids), models.forward(model, ids))


def test_gguf_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        models.load_pretrained(tmp_path / "missing.gguf")
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="not a .gguf"):
        models.load_pretrained(tmp_path / "weights.bin")
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(ValueError, match="not a GGUF file"):
        models.load_pretrained(tmp_path / "fake.gguf")
    model = models.init_model(CFG, jax.random.key(0))
    path = _write_gguf(tmp_path / "other.gguf", model, arch="gpt2")
    with pytest.raises(ValueError, match=r"GGUF architecture 'gpt2' unsupported.*llama"):
        models.load_pretrained(path)


def test_load_config_without_weights(tmp_path):
    model = models.init_model(CFG, jax.random.key(0))
    assert models.load_config(_write_gguf(tmp_path / "tiny.gguf", model)) == CFG
    out = models.save_pretrained(model, tmp_path / "hf")
    assert models.load_config(out, compute_dtype="bfloat16") == dataclasses.replace(
        CFG, compute_dtype="bfloat16"
    )
    with pytest.raises(FileNotFoundError):
        models.load_config(tmp_path / "nope")


def test_convert_cli_reports_bad_path(tmp_path, capsys):
    from gbmpo_jax.models.convert import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--gguf", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "missing.gguf not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
