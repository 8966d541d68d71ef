"""Model layer on tiny random models: parity with transformers, round trips, KV cache, errors."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbmpo_jax import models
from gbmpo_jax.models import hf_io

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 128
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8,  # tiny, so that all three frequency bands occur
}
CASES = {
    "qwen2_tied": lambda: transformers.Qwen2Config(**COMMON, tie_word_embeddings=True),
    "qwen2_untied": lambda: transformers.Qwen2Config(**COMMON, tie_word_embeddings=False),
    "llama_gqa_llama3rope": lambda: transformers.LlamaConfig(
        **COMMON, rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False
    ),
    "qwen3_qknorm": lambda: transformers.Qwen3Config(
        **COMMON, head_dim=32, tie_word_embeddings=True
    ),
}


def _torch_model(case):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CASES[case]()).eval()
    with torch.no_grad():  # larger than the 0.02 init so that every term matters
        for name, p in model.named_parameters():
            p.normal_(1.0, 0.3) if "norm" in name else p.normal_(0.0, 0.1)
    return model


@pytest.fixture(scope="module", params=list(CASES))
def hf_case(request, tmp_path_factory):
    """(case name, torch model, saved HF dir) for each tiny architecture."""
    model = _torch_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, model, path


def _batch(rng, lengths, T):
    """Left-padded int ids [B,T] and mask [B,T] with the given real lengths."""
    ids = rng.integers(3, VOCAB, (len(lengths), T))
    mask = np.zeros((len(lengths), T), np.int64)
    for b, n in enumerate(lengths):
        mask[b, T - n :] = 1
    ids = np.where(mask == 1, ids, 0)
    return ids, mask


def _torch_logits(model, ids, mask):
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(pos),
        )
    return out.logits.float().numpy()


_APPLY = jax.jit(models.apply, static_argnums=1)  # shared so that tests reuse compilations


def _max_diff(a, b, mask):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) * mask[..., None]))


def test_positions_from_mask_hand_values():
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    want = [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]
    np.testing.assert_array_equal(models.positions_from_mask(mask), want)


def test_parity_with_transformers_left_padded(hf_case):
    name, torch_model, path = hf_case
    model = models.load_pretrained(path)
    ids, mask = _batch(np.random.default_rng(0), [11, 6, 1], 11)
    ours = models.forward(model, ids, mask)
    assert ours.dtype == jnp.float32 and ours.shape == (3, 11, VOCAB)
    ref = _torch_logits(torch_model, ids, mask)
    assert np.abs(ref).max() > 0.1, "reference logits are degenerate"
    assert _max_diff(ours, ref, mask) <= 1e-4, name


def test_round_trip_save_pretrained_transformers_loads(hf_case, tmp_path):
    name, torch_model, path = hf_case
    model = models.load_pretrained(path)
    out = models.save_pretrained(model, tmp_path / "saved")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids, mask = _batch(np.random.default_rng(1), [7, 4], 7)
    assert (
        _max_diff(_torch_logits(reloaded, ids, mask), _torch_logits(torch_model, ids, mask), mask)
        <= 1e-6
    )
    again = models.load_pretrained(out)
    assert again.config == model.config
    jax.tree.map(np.testing.assert_array_equal, again.params, model.params)


def test_sharded_save_with_index(tmp_path):
    cfg = models.ModelConfig("llama", 64, 32, 48, 3, 4, 2, 8, tie_word_embeddings=False)
    model = models.init_model(cfg, jax.random.key(0))
    out = models.save_pretrained(model, tmp_path / "m", max_shard_bytes=20_000)
    index = json.loads((out / hf_io.INDEX_NAME).read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == shards
    assert "lm_head.weight" in index["weight_map"]
    again = models.load_pretrained(out)
    jax.tree.map(np.testing.assert_array_equal, again.params, model.params)
    # transformers reads the sharded directory and agrees
    tm = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids, mask = _batch(np.random.default_rng(2), [5, 3], 5)
    ids = ids % 64
    assert _max_diff(models.forward(model, ids, mask), _torch_logits(tm, ids, mask), mask) <= 1e-5


def test_bfloat16_params_and_compute(tmp_path, hf_case):
    name, torch_model, path = hf_case
    model = models.load_pretrained(path, dtype="bfloat16")
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(model.params))
    assert model.config.compute_dtype == "bfloat16"
    ids, mask = _batch(np.random.default_rng(3), [6, 3], 6)
    logits = models.forward(model, ids, mask)
    assert logits.dtype == jnp.float32
    ref = _torch_logits(torch_model, ids, mask)
    assert _max_diff(logits, ref, mask) <= 0.05 * np.abs(ref).max()
    out = models.save_pretrained(model, tmp_path / "bf16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    again = models.load_pretrained(out, dtype="bfloat16")
    jax.tree.map(np.testing.assert_array_equal, again.params, model.params)


def test_kv_cache_prefill_then_decode_matches_full_forward(hf_case):
    name, _, path = hf_case
    model = models.load_pretrained(path)
    cfg, params = model.config, model.params
    P, N = 6, 6  # prompt width, decoded tokens
    ids, prompt_mask = _batch(np.random.default_rng(4), [6, 2, 4], P)
    new = np.random.default_rng(5).integers(3, VOCAB, (3, N))
    full_ids = np.concatenate([ids, new], 1)
    full_mask = np.concatenate([prompt_mask, np.ones((3, N), np.int64)], 1)
    full = models.forward(model, full_ids, full_mask)
    pos = np.asarray(models.positions_from_mask(full_mask))
    # one-token decode everywhere; multi-token cache writes once (architecture-independent)
    for chunk in (1, 3) if name == "qwen3_qknorm" else (1,):
        cache = models.init_cache(cfg, 3, P + N)
        slots = np.zeros((3, P + N), np.int32)
        slots[:, :P] = prompt_mask
        logits, cache = _APPLY(params, cfg, ids, pos[:, :P], slots, cache, 0)
        got = [logits]
        for t in range(P, P + N, chunk):
            slots[:, t : t + chunk] = 1
            sl = slice(t, t + chunk)
            logits, cache = _APPLY(params, cfg, full_ids[:, sl], pos[:, sl], slots, cache, t)
            got.append(logits)
        got = jnp.concatenate(got, 1)
        assert cache["k"].shape == (cfg.num_layers, 3, P + N, cfg.num_kv_heads, cfg.head_dim)
        assert _max_diff(got, full, full_mask) <= 1e-5, (name, chunk)


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_unstacked_decode_layout_matches_full_forward(model_type):
    """unstack_layers/unstack_cache (the rollout's decode layout) give the full-forward logits,
    write the new slots in place, and refuse to mix with the stacked layout."""
    from gbmpo_jax.models import transformer

    cfg = models.ModelConfig(model_type, VOCAB, 32, 48, 2, 4, 2, 8, tie_word_embeddings=True)
    model = models.init_model(cfg, jax.random.key(4))
    P, N = 4, 3
    ids, mask = _batch(np.random.default_rng(8), [4, 2], P + N)
    mask[:, P:] = 1
    full = models.forward(model, ids, mask)
    pos = np.asarray(models.positions_from_mask(mask))
    slots = np.zeros((2, P + N), np.int32)
    slots[:, :P] = mask[:, :P]
    cache = models.init_cache(cfg, 2, P + N)
    logits, cache = _APPLY(model.params, cfg, ids[:, :P], pos[:, :P], slots, cache, 0)
    params = transformer.unstack_layers(model.params)
    cache = transformer.unstack_cache(cache)
    assert len(cache["k"]) == 2 and cache["k"][0].shape == (2, 2, P + N, 8)
    got = [logits]
    for t in range(P, P + N):
        slots[:, t] = 1
        logits, cache = _APPLY(params, cfg, ids[:, t : t + 1], pos[:, t : t + 1], slots, cache, t)
        got.append(logits)
    assert _max_diff(jnp.concatenate(got, 1), full, mask) <= 1e-5
    assert float(jnp.abs(cache["v"][1][:, :, P + N - 1]).max()) > 0  # last slot written
    with pytest.raises(ValueError, match="unstack_cache"):
        models.apply(params, cfg, ids, pos, mask, models.init_cache(cfg, 2, P + N), 0)


def test_bfloat16_cache_with_float32_compute():
    cfg = models.ModelConfig("llama", VOCAB, 32, 48, 2, 4, 2, 8)
    model = models.init_model(cfg, jax.random.key(3))
    ids, mask = _batch(np.random.default_rng(7), [5, 2], 5)
    full = models.forward(model, ids, mask)
    pos = models.positions_from_mask(mask)
    cache = models.init_cache(cfg, 2, 5, "bfloat16")
    assert cache["v"].dtype == jnp.bfloat16
    slots = np.zeros((2, 5), np.int32)
    slots[:, :4] = mask[:, :4]
    logits, cache = _APPLY(model.params, cfg, ids[:, :4], pos[:, :4], slots, cache, 0)
    slots[:, 4] = 1
    last, cache = _APPLY(model.params, cfg, ids[:, 4:], pos[:, 4:], slots, cache, 4)
    got = jnp.concatenate([logits, last], 1)
    assert cache["k"].dtype == jnp.bfloat16
    assert 0 < _max_diff(got, full, mask) <= 1e-2 * float(jnp.abs(full).max())


def test_forward_traces_once_per_shape():
    cfg = models.ModelConfig("qwen2", VOCAB, 32, 48, 1, 4, 2, 8)
    a = models.init_model(cfg, jax.random.key(0))
    b = models.init_model(cfg, jax.random.key(1))
    ids, mask = _batch(np.random.default_rng(8), [4, 2], 4)
    from gbmpo_jax.models import model as model_lib

    before = model_lib._forward._cache_size()
    assert not np.allclose(models.forward(a, ids, mask), models.forward(b, ids, mask))
    models.forward(a, ids.astype(np.int64), mask.astype(bool))
    assert model_lib._forward._cache_size() == before + 1


def test_remat_and_grads():
    cfg = models.ModelConfig("qwen3", VOCAB, 32, 48, 2, 4, 2, 8)
    model = models.init_model(cfg, jax.random.key(0))
    remat = models.Model(dataclasses.replace(cfg, remat=True), model.params)
    ids, mask = _batch(np.random.default_rng(6), [5, 3], 5)

    def loss(params, cfg):
        pos = models.positions_from_mask(mask)
        logits, _ = models.apply(params, cfg, ids, pos, mask)
        return jnp.sum(jax.nn.log_softmax(logits)[..., 0] * mask)

    g1 = jax.jit(jax.grad(loss), static_argnums=1)(model.params, model.config)
    g2 = jax.jit(jax.grad(loss), static_argnums=1)(remat.params, remat.config)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    assert any(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(g1["layers"]))


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("tied", [True, False])
def test_init_model_logical_axes_match_params(model_type, tied):
    cfg = models.ModelConfig(model_type, 32, 16, 24, 2, 4, 2, 4, tie_word_embeddings=tied)
    model = models.init_model(cfg, jax.random.key(1))
    axes = models.logical_axes(cfg)
    is_axes = lambda x: isinstance(x, tuple)
    assert jax.tree.structure(axes, is_leaf=is_axes) == jax.tree.structure(model.params)
    names = {"layers", "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm"}
    for ax, p in zip(
        jax.tree.leaves(axes, is_leaf=is_axes), jax.tree.leaves(model.params), strict=True
    ):
        assert len(ax) == p.ndim and set(ax) <= names
    assert ("lm_head" in model.params) != tied
    assert ("q_bias" in model.params["layers"]) == (model_type == "qwen2")
    assert ("q_norm" in model.params["layers"]) == (model_type == "qwen3")
    assert np.all(np.isfinite(models.forward(model, np.ones((1, 3), np.int32))))


def test_model_is_a_pytree_with_static_config():
    cfg = models.ModelConfig("llama", 32, 16, 24, 2, 4, 2, 4)
    model = models.init_model(cfg, jax.random.key(1))
    doubled = jax.tree.map(lambda a: 2 * a, model)
    assert isinstance(doubled, models.Model) and doubled.config == cfg
    assert len(jax.tree.leaves(model)) == len(jax.tree.leaves(model.params))
    assert hash(cfg) == hash(models.ModelConfig("llama", 32, 16, 24, 2, 4, 2, 4))


# --------------------------------------------------------------------------- bad input
def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        models.load_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="vocab_size"):
        models.load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        models.load_tokenizer(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        models.load_tokenizer(tmp_path)


def test_unsupported_model_type_lists_supported(hf_case, tmp_path):
    _, _, path = hf_case
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"unsupported model_type 'gpt2'.*llama.*qwen2.*qwen3"):
        models.load_pretrained(tmp_path)
    with pytest.raises(ValueError, match="supported"):
        models.ModelConfig("mistral", 32, 16, 24, 2, 4, 2, 4)


def test_wrong_tensor_shape_is_named(tmp_path):
    cfg = models.ModelConfig("qwen2", 32, 16, 24, 2, 4, 2, 4)
    out = models.save_pretrained(models.init_model(cfg, jax.random.key(0)), tmp_path / "m")
    tensors = {k: np.array(v) for k, v in hf_io.read_safetensors(out / "model.safetensors").items()}
    tensors["model.layers.1.self_attn.k_proj.bias"] = np.zeros(5, np.float32)
    hf_io.write_safetensors(out / "model.safetensors", tensors)
    with pytest.raises(
        ValueError, match=r"model\.layers\.1\.self_attn\.k_proj\.bias.*\(5,\).*\(8,\)"
    ):
        models.load_pretrained(out)
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    hf_io.write_safetensors(out / "model.safetensors", tensors)
    with pytest.raises(
        ValueError, match=r"lacks tensor 'model\.layers\.1\.self_attn\.k_proj\.bias'"
    ):
        models.load_pretrained(out)


def test_unknown_dtype(hf_case):
    _, _, path = hf_case
    with pytest.raises(ValueError, match=r"unknown dtype 'float8'.*bfloat16.*float32"):
        models.load_pretrained(path, dtype="float8")
    with pytest.raises(ValueError, match="compute_dtype"):
        models.ModelConfig("llama", 32, 16, 24, 2, 4, 2, 4, compute_dtype="int8")


def test_bad_config_fields():
    with pytest.raises(ValueError, match="num_kv_heads"):
        models.ModelConfig("llama", 32, 16, 24, 2, 4, 3, 4)
    with pytest.raises(ValueError, match="attention_bias"):
        models.ModelConfig("qwen2", 32, 16, 24, 2, 4, 2, 4, attention_bias=False)
    with pytest.raises(ValueError, match="rope_type 'yarn'"):
        models.ModelConfig("llama", 32, 16, 24, 2, 4, 2, 4, rope_scaling=(("rope_type", "yarn"),))


def test_apply_shape_errors():
    cfg = models.ModelConfig("llama", 32, 16, 24, 2, 4, 2, 4)
    params = models.init_model(cfg, jax.random.key(0)).params
    ids = jnp.ones((2, 3), jnp.int32)
    with pytest.raises(ValueError, match="positions shape"):
        models.apply(params, cfg, ids, jnp.zeros((2, 4), jnp.int32), None)
    with pytest.raises(ValueError, match=r"attention_mask shape \(2, 5\) != \(2, 3\)"):
        models.apply(params, cfg, ids, jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 5)))
    cache = models.init_cache(cfg, 2, 4)
    with pytest.raises(ValueError, match="cache_index 2 \\+ 3 new tokens"):
        models.apply(params, cfg, ids, jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 4)), cache, 2)
    with pytest.raises(ValueError, match="cache slots"):
        models.apply(params, cfg, ids, jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3)), cache, 0)


def test_save_is_atomic_and_refuses_foreign_dirs(tmp_path):
    cfg = models.ModelConfig("llama", 32, 16, 24, 2, 4, 2, 4)
    model = models.init_model(cfg, jax.random.key(0))

    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        models.save_pretrained(model, tmp_path / "m", tokenizer=BrokenTokenizer())
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp dir is left
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="without config.json"):
        models.save_pretrained(model, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    # overwriting an existing model directory replaces it wholesale
    out = models.save_pretrained(model, tmp_path / "m")
    (out / "stale.safetensors").write_bytes(b"x")
    models.save_pretrained(model, out)
    assert not (out / "stale.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "m"]


@pytest.mark.parametrize("remat", [False, True])
def test_unrolled_layer_loop_matches_the_scan(remat):
    """scan_layers=False (the layers unrolled: faster on XLA:CPU) computes the same logits and
    gradients as the scan over stacked layers."""
    import dataclasses

    cfg = models.ModelConfig("qwen3", VOCAB, 32, 48, 3, 4, 2, 8, remat=remat)
    unrolled = dataclasses.replace(cfg, scan_layers=False)
    model = models.init_model(cfg, jax.random.key(5))
    ids, mask = _batch(np.random.default_rng(9), [6, 3], 6)
    pos = models.positions_from_mask(mask)

    def loss(params, c):
        logits, _ = models.apply(params, c, ids, pos, mask)
        return jnp.sum(jax.nn.log_softmax(logits)[..., 3] * mask)

    a, ga = jax.value_and_grad(loss)(model.params, cfg)
    b, gb = jax.value_and_grad(loss)(model.params, unrolled)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
