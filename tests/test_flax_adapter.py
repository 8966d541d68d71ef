"""A user's flax causal LM (NNX and linen) trained by the GBMPO update through the adapters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx

from gbmpo_jax.models import flax_adapter
from gbmpo_jax.rl import divergences as dv
from gbmpo_jax.rl import train_step as ts
from gbmpo_jax.rl.optim import Optimizer

V, E, P, T, G = 11, 16, 3, 4, 4  # vocab, width, prompt, completion, group size


def _causal(mask):
    t = mask.shape[1]
    return jnp.tril(jnp.ones((t, t), bool))[None, None] & (mask[:, None, None, :] > 0)


class NnxLM(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(V, E, rngs=rngs)
        self.norm = nnx.RMSNorm(E, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=2, in_features=E, qkv_features=E, decode=False, rngs=rngs
        )
        self.head = nnx.Linear(E, V, rngs=rngs)

    def __call__(self, input_ids, attention_mask):
        h = self.embed(input_ids)
        h = h + self.attn(self.norm(h), mask=_causal(attention_mask))
        return self.head(h)


class LinenLM(linen.Module):
    @linen.compact
    def __call__(self, input_ids, attention_mask):
        h = linen.Embed(V, E)(input_ids)
        h = h + linen.MultiHeadDotProductAttention(num_heads=2)(
            linen.RMSNorm()(h), mask=_causal(attention_mask)
        )
        return linen.Dense(V)(h)


def _batch():
    """Two prompts x G completions; those starting with token 1 get positive advantages."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, V, (2 * G, P + T)).astype(np.int32)
    ids[:, P] = np.tile([1, 2], G)
    adv = np.where(ids[:, P] == 1, 1.0, -1.0).astype(np.float32)
    return {
        "input_ids": jnp.asarray(ids),
        "attention_mask": jnp.ones((2 * G, P + T), jnp.int32),
        "completion_mask": jnp.ones((2 * G, T), jnp.int32),
        "advantages": jnp.asarray(adv),
    }


def _train(apply_fn, params, steps=6):
    cfg = ts.step_config(max_completion_length=T, group_size=G)
    div = dv.get("prob_l2")
    opt = Optimizer(optax.adam(3e-3), lambda step: jnp.float32(3e-3))
    state = ts.init_state(params, opt, div.init_params(None), 0.01, cfg, divergence=div)
    update = ts.make_update(apply_fn, div, opt, cfg)
    batch = _batch()
    logp = ts.make_compute_logprobs(apply_fn, cfg)

    def objective(st):  # sum_i A_i log pi(completion_i): what the policy gradient ascends
        lp = logp(st, batch["input_ids"], batch["attention_mask"], T)[0].sum(-1)
        return float(jnp.sum(batch["advantages"] * lp))

    before = objective(state)
    for i in range(steps):
        state, m = update(state, batch, jax.random.key(i))
        assert np.isfinite(float(m["train/loss"]))
    return state, before, objective(state), batch


@pytest.mark.parametrize("kind", ["nnx", "linen"])
def test_flax_model_learns_through_the_update(kind):
    if kind == "nnx":
        model = NnxLM(nnx.Rngs(0))
        apply_fn, params, to_module = flax_adapter.from_nnx(model)
    else:
        module = LinenLM()
        ids = jnp.zeros((1, P + T), jnp.int32)
        variables = module.init(jax.random.key(0), ids, jnp.ones_like(ids))
        apply_fn, params, to_module = flax_adapter.from_linen(module, variables)
    assert isinstance(params, dict)
    initial = jax.tree.map(np.asarray, params)  # the update donates the state it is given
    state, before, after, batch = _train(apply_fn, params)
    # rewarded completions became likelier relative to the penalised ones
    assert after > before + 1.0, (before, after)
    # the trained params go back into the user's own module with the same logits
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if kind == "nnx":
        logits = to_module(state.params)(ids, mask)
        model(ids, mask)  # the user's own module still holds its (initial) arrays
    else:
        logits = module.apply(to_module(state.params), ids, mask)
    np.testing.assert_allclose(logits, apply_fn(state.params, ids, mask), rtol=1e-5, atol=1e-5)
    # the reference stayed the initial module
    np.testing.assert_allclose(
        apply_fn(state.frozen, ids, mask), apply_fn(initial, ids, mask), rtol=0, atol=0
    )


def test_linen_without_params_collection_is_named():
    with pytest.raises(ValueError, match="'params'"):
        flax_adapter.from_linen(LinenLM(), {"batch_stats": {}})
