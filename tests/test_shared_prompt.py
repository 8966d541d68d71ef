"""Prompts run once per group (`models.hidden_shared_prompt`, `StepConfig.shared_prompts`) and
the projections' custom backward (`models.dense`): the same values and gradients as the plain
paths, to fp32 rounding, on tiny models with left-padded prompts and ragged completions."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbmpo_jax import models, policy
from gbmpo_jax.models import presets
from gbmpo_jax.models.dense import dense
from gbmpo_jax.rl import divergences as dv
from gbmpo_jax.rl import train_step as ts
from gbmpo_jax.rl.optim import OptimConfig, make_optimizer

V, G, B, P, T = 97, 4, 3, 7, 5  # vocab, group, prompts, prompt and completion tokens


def _rollout_batch(seed=0):
    """A rollout's layout: row b*G + g holds prompt b (left-padded), then its completion."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(2, V, (B, P))
    pmask = np.ones((B, P), np.int32)
    pmask[0, :3] = 0
    pmask[2, :1] = 0
    ids = np.concatenate([np.repeat(prompt, G, 0), rng.integers(2, V, (B * G, T))], 1)
    cmask = (np.arange(T)[None] < rng.integers(1, T + 1, (B * G,))[:, None]).astype(np.int32)
    am = np.concatenate([np.repeat(pmask, G, 0), cmask], 1)
    adv = rng.normal(size=B * G).astype(np.float32)
    return {"input_ids": ids.astype(np.int32), "attention_mask": am, "completion_mask": cmask,
            "advantages": adv}  # fmt: skip


@pytest.mark.parametrize(
    "shape,scan,remat",
    [("tiny", True, False), ("qwen3-tiny", False, False), ("qwen3-tiny", False, True)],
)
def test_shared_prompt_trunk_equals_the_full_trunk(shape, scan, remat):
    mc = presets.model_config(shape, V, scan_layers=scan, remat=remat)
    params = models.init_params(mc, jax.random.key(1))
    b = _rollout_batch()
    ids, am = b["input_ids"], b["attention_mask"]
    w = (
        jax.random.normal(jax.random.key(3), (B * G, T, mc.hidden_size))
        * b["completion_mask"][..., None]
    )

    def full(p):
        return models.hidden(p, mc, ids, models.positions_from_mask(am), am)[0][
            :, P - 1 : P - 1 + T
        ]

    def shared(p):
        return models.hidden_shared_prompt(p, mc, ids, am, T, G)

    np.testing.assert_allclose(shared(params), full(params), atol=2e-6, rtol=1e-5)
    ga = jax.grad(lambda p: jnp.sum(full(p) * w))(params)
    gb = jax.grad(lambda p: jnp.sum(shared(p) * w))(params)
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(ga))
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(y, x, atol=1e-5 * scale)


def test_shared_prompt_rejects_rows_that_do_not_form_groups():
    mc = presets.model_config("tiny", V)
    params = models.init_params(mc, jax.random.key(1))
    ids = jnp.zeros((6, P + T), jnp.int32)
    with pytest.raises(ValueError, match="groups of 4 rows"):
        models.hidden_shared_prompt(params, mc, ids, jnp.ones_like(ids), T, 4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("i,o", [(8, 24), (24, 8)])  # both transposition branches
@pytest.mark.parametrize("transpose_w", [False, True])  # [I,O] weights, tied [V,E] embedding
def test_dense_matches_einsum_values_and_gradients(dtype, i, o, transpose_w):
    dt = jnp.dtype(dtype)
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, 5, i)).astype(dt)
    w = jax.random.normal(kw, (o, i) if transpose_w else (i, o)).astype(dt)
    g = jax.random.normal(kg, (3, 5, o))

    def ref(x, w):
        spec = "bti,oi->bto" if transpose_w else "bti,io->bto"
        return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32)

    tol = dict(rtol=2e-2, atol=5e-2) if dtype == "bfloat16" else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dense(x, w, jnp.float32, transpose_w), ref(x, w), **tol)
    want = jax.grad(lambda x, w: jnp.sum(ref(x, w) * g), argnums=(0, 1))(x, w)
    got = jax.grad(lambda x, w: jnp.sum(dense(x, w, jnp.float32, transpose_w) * g), argnums=(0, 1))(
        x, w
    )
    for a, c in zip(got, want, strict=True):
        assert a.dtype == c.dtype == dt
        np.testing.assert_allclose(a.astype(jnp.float32), c.astype(jnp.float32), **tol)


@pytest.mark.parametrize("micro", [1, 2])  # 2: six rows per micro-batch, not whole groups
def test_update_with_shared_prompts_equals_the_plain_update(micro):
    """The step program's setting (shared_prompts) changes no number: the reference pass,
    the metrics and the new params equal the plain path's; with micro-batches that do not
    hold whole groups it falls back to the plain trunk."""
    mc = presets.model_config("qwen3-tiny", V, scan_layers=False)
    params = models.init_params(mc, jax.random.key(2))
    div = dv.get("kl")
    opt = make_optimizer(OptimConfig(lr=1e-3, schedule="constant", warmup_ratio=0.0), 4)
    b = _rollout_batch(1)
    out = {}
    for shared in (False, True):
        cfg = ts.step_config(group_size=G, micro_batches=micro, logprob_chunk=8)
        cfg = dataclasses.replace(cfg, shared_prompts=shared)
        if shared and micro == 1:
            assert ts._group(cfg, B * G) == G
        state = ts.init_state(jax.tree.map(jnp.copy, params), opt, div.init_params(jax.random.key(0)), 0.1, cfg,
                              divergence=div)  # fmt: skip
        apply_fn = policy.make_apply_fn(mc)
        _, ref, _ = ts.make_compute_logprobs(apply_fn, cfg)(
            state, b["input_ids"], b["attention_mask"], T
        )
        update = ts.make_update(apply_fn, div, opt, cfg)
        state, _ = update(state, dict(b), jax.random.key(0))
        state, m = update(state, dict(b), jax.random.key(1))  # off the reference now
        out[shared] = (ref, m, state.params)
    (r0, m0, p0), (r1, m1, p1) = out[False], out[True]
    np.testing.assert_allclose(r1, r0, rtol=1e-5, atol=1e-6)
    for k in ("train/loss", "div/mean", "train/grad_norm", "train/entropy"):
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-4, atol=1e-7, err_msg=k)
    assert float(m0["div/mean"]) > 0
    jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6), p1, p0)
