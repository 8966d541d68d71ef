"""LoRA adapters over a generic params pytree (stacked layers, multi-axis projections)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbmpo_jax.rl import lora

L, E, H, D, F = 2, 6, 2, 3, 5


def _base(dtype=jnp.float32):
    ks = jax.random.split(jax.random.PRNGKey(0), 6)
    n = lambda k, s: jax.random.normal(k, s).astype(dtype)  # noqa: E731
    return {
        "embed": n(ks[0], (11, E)),
        "layers": {
            "q": n(ks[1], (L, E, H, D)),
            "o": n(ks[2], (L, H, D, E)),
            "down": n(ks[3], (L, F, E)),
            "q_bias": n(ks[4], (L, H, D)),
            "attn_norm": jnp.ones((L, E), dtype),
        },
        "head": {"up_proj": {"kernel": n(ks[5], (E, F))}},  # HF-style, unstacked
    }


def _init(key, base, cfg):
    return jax.jit(lambda k, b: lora.init(k, b, cfg))(key, base)


def test_targets_and_shapes():
    cfg = lora.LoraConfig(rank=2, alpha=4.0)
    base = _base()
    spec = lora.targets(base, cfg)
    assert spec == {
        ("layers", "q"): (1, 1, 2),
        ("layers", "o"): (1, 2, 1),
        ("layers", "down"): (1, 1, 1),
        ("head", "up_proj", "kernel"): (0, 1, 1),
    }
    ad = _init(jax.random.PRNGKey(1), base, cfg)
    assert ad["layers"]["q"]["lora_a"].shape == (L, E, 2)
    assert ad["layers"]["q"]["lora_b"].shape == (L, 2, H * D)
    assert ad["layers"]["o"]["lora_a"].shape == (L, H * D, 2)
    assert ad["head"]["up_proj"]["kernel"]["lora_b"].shape == (2, F)
    assert lora.num_params(ad) == sum(x.size for x in jax.tree.leaves(ad))


def test_zero_b_means_merge_is_base():
    cfg = lora.LoraConfig(rank=2, alpha=4.0)
    base = _base()
    ad = _init(jax.random.PRNGKey(1), base, cfg)
    merged = jax.jit(lambda b, a: lora.merge(b, a, cfg))(base, ad)
    jax.tree.map(np.testing.assert_array_equal, merged, base)


def test_merge_math_per_layer():
    cfg = lora.LoraConfig(rank=2, alpha=4.0)
    base = _base()
    ad = _init(jax.random.PRNGKey(1), base, cfg)
    ad = jax.tree.map(lambda x: x + 0.1, ad)
    merged = lora.merge(base, ad, cfg)
    a, b = ad["layers"]["o"]["lora_a"], ad["layers"]["o"]["lora_b"]
    for layer in range(L):
        want = base["layers"]["o"][layer].reshape(H * D, E) + 2.0 * a[layer] @ b[layer]
        np.testing.assert_allclose(merged["layers"]["o"][layer].reshape(H * D, E), want, rtol=1e-6)
    np.testing.assert_array_equal(merged["layers"]["q_bias"], base["layers"]["q_bias"])
    np.testing.assert_array_equal(merged["embed"], base["embed"])


def test_bf16_base_merges_in_float32():
    cfg = lora.LoraConfig(rank=2, alpha=2.0)
    base = _base(jnp.bfloat16)
    ad = jax.tree.map(lambda x: x + 1e-4, _init(jax.random.PRNGKey(1), base, cfg))
    merged = lora.merge(base, ad, cfg)
    assert merged["layers"]["q"].dtype == jnp.float32
    assert merged["embed"].dtype == jnp.bfloat16
    assert float(jnp.max(jnp.abs(merged["layers"]["q"] - base["layers"]["q"]))) > 0


def test_config_errors():
    with pytest.raises(ValueError, match="rank"):
        lora.LoraConfig(rank=-1)
    with pytest.raises(ValueError, match="alpha"):
        lora.LoraConfig(rank=2)  # rank > 0 needs alpha > 0
    assert not lora.LoraConfig().enabled  # rank 0 = full fine-tuning
    with pytest.raises(ValueError, match="rank is 0"):
        lora.init(jax.random.key(0), _base(), lora.LoraConfig())
    with pytest.raises(ValueError, match="match no weight"):
        lora.targets(_base(), lora.LoraConfig(rank=2, alpha=2.0, targets=("w_in",)))
