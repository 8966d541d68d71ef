"""The jitted update on a toy LM: accumulation exactness, reference policy, skips, schedules."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gbmpo_jax.rl import divergences as dv
from gbmpo_jax.rl import lora
from gbmpo_jax.rl import train_step as ts
from gbmpo_jax.rl.optim import OptimConfig, Optimizer, make_optimizer

V, E, NL, P, T, N = 13, 8, 2, 3, 5, 8  # vocab, width, layers, prompt, completion, rows


def toy_params(key):
    ks = jax.random.split(key, 4)
    return {
        "embed": 0.5 * jax.random.normal(ks[0], (V, E)),
        "layers": {
            "q": 0.3 * jax.random.normal(ks[1], (NL, E, E)),
            "down": 0.3 * jax.random.normal(ks[2], (NL, E, E)),
        },
        "head": 0.5 * jax.random.normal(ks[3], (E, V)),
    }


def toy_apply(params, input_ids, attention_mask):
    """A tiny causal LM: each position sees its own token through residual tanh layers."""
    h = params["embed"][input_ids] * attention_mask[..., None]
    for i in range(NL):
        h = h + jnp.tanh(h @ params["layers"]["q"][i]) @ params["layers"]["down"][i]
    return h @ params["head"]


def toy_batch(key, n=N, ragged=True):
    k1, k2, k3 = jax.random.split(key, 3)
    ids = jax.random.randint(k1, (n, P + T), 0, V)
    am = jnp.ones((n, P + T), jnp.int32).at[0, 0].set(0)  # one left-padded prompt
    lengths = jax.random.randint(k2, (n,), 1, T + 1) if ragged else jnp.full((n,), T)
    cm = (jnp.arange(T)[None] < lengths[:, None]).astype(jnp.int32)
    am = am.at[:, P:].set(cm)
    rewards = jax.random.bernoulli(k3, 0.5, (n,)).astype(jnp.float32)
    adv = rewards - rewards.reshape(-1, 4).mean(1).repeat(4)
    return {"input_ids": ids, "attention_mask": am, "completion_mask": cm, "advantages": adv}


SGD = Optimizer(optax.sgd(0.5), lambda step: jnp.float32(0.5))


def _setup(cfg, div_name="kl", coef=0.1, optimizer=SGD, seed=0):
    div = dv.get(div_name)
    params = toy_params(jax.random.PRNGKey(seed))
    state = ts.init_state(
        params, optimizer, div.init_params(None), coef, cfg, jax.random.PRNGKey(9), div
    )
    return params, div, state


def _copy(state):
    return jax.tree.map(jnp.copy, state)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "bnpo", "dapo"])
def test_micro_batches_equal_full_batch(loss_type):
    cfg1 = ts.step_config(loss_type=loss_type, max_completion_length=T, temperature=0.7)
    cfg4 = ts.step_config(loss_type=loss_type, max_completion_length=T, temperature=0.7,
                          micro_batches=4)  # fmt: skip
    _, div, state = _setup(cfg1)
    batch = toy_batch(jax.random.PRNGKey(1))
    batch["num_items_in_batch"] = jnp.sum(batch["completion_mask"]).astype(jnp.float32) + 3.0
    # old policy differs from the current one so the ratios and the clip matter
    old = ts.make_compute_logprobs(toy_apply, cfg1)(
        state, batch["input_ids"], batch["attention_mask"], T
    )
    batch["old_logp"] = old[0] + 0.15 * jax.random.normal(jax.random.PRNGKey(2), (N, T))
    s1, m1 = ts.make_update(toy_apply, div, SGD, cfg1)(_copy(state), batch, jax.random.PRNGKey(0))
    s4, m4 = ts.make_update(toy_apply, div, SGD, cfg4)(_copy(state), batch, jax.random.PRNGKey(0))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s1.params, s4.params)
    for k in ("train/loss", "div/mean", "ratio/min", "ratio/max", "train/tokens"):
        np.testing.assert_allclose(m1[k], m4[k], rtol=1e-5, atol=1e-7)
    assert float(m1["train/grad_norm"]) > 0
    assert not np.allclose(s1.params["head"], state.params["head"])


@pytest.mark.parametrize("div_name", ["kl", "prob_l2"])
def test_on_policy_update_equals_one_with_stored_old_logprobs(div_name):
    # mu = 1 without old_logp: old = stop_gradient of the update's own forward. Same step as
    # storing the policy's log-probs first (the extra forward train.py used to run).
    cfg = ts.step_config(max_completion_length=T, temperature=0.7)
    assert ts.on_policy(cfg) and not ts.on_policy(ts.step_config(mu=2))
    _, div, state = _setup(cfg, div_name=div_name, coef=0.3)
    batch = toy_batch(jax.random.PRNGKey(4))
    lp, rp, _ = ts.make_compute_logprobs(toy_apply, cfg)(
        state, batch["input_ids"], batch["attention_mask"], T
    )
    none, rp2, _ = ts.make_compute_logprobs(toy_apply, cfg, policy=False)(
        state, batch["input_ids"], batch["attention_mask"], T
    )
    assert none is None
    np.testing.assert_array_equal(rp, rp2)
    update = ts.make_update(toy_apply, div, SGD, cfg)
    stored = dict(batch, old_logp=lp, ref_logp=rp)
    s1, m1 = update(_copy(state), stored, jax.random.PRNGKey(0))
    s2, m2 = update(_copy(state), dict(batch, ref_logp=rp), jax.random.PRNGKey(0))
    s3, m3 = update(_copy(state), batch, jax.random.PRNGKey(0))  # ref computed inside too
    for s, m in ((s2, m2), (s3, m3)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s1.params, s.params)
        for k in ("train/loss", "div/mean", "train/grad_norm", "ratio/mean"):
            np.testing.assert_allclose(m1[k], m[k], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m2["ratio/min"], 1.0)
    np.testing.assert_allclose(m2["ratio/max"], 1.0)
    assert not np.allclose(s2.params["head"], state.params["head"])


def test_reference_stays_initial_policy_full_finetune():
    cfg = ts.step_config(max_completion_length=T, mu=2)
    params0, div, state = _setup(cfg, coef=0.5)
    params0 = jax.tree.map(np.array, params0)  # the state (and its buffers) is donated
    update = ts.make_update(toy_apply, div, SGD, cfg)
    logprobs = ts.make_compute_logprobs(toy_apply, cfg)
    batch = toy_batch(jax.random.PRNGKey(3))
    for i in range(3):
        state, metrics = update(state, batch, jax.random.PRNGKey(i))
    pol, ref, ent = logprobs(state, batch["input_ids"], batch["attention_mask"], T)
    want_ref, _ = ts.completion_logprobs(
        toy_apply, params0, batch["input_ids"], batch["attention_mask"], T, 1.0
    )
    np.testing.assert_allclose(ref, want_ref, rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(pol - ref))) > 1e-3  # the policy moved
    assert float(metrics["div/mean"]) > 0  # so the regulariser is active
    assert int(state.step) == 6 and np.all(np.asarray(ent) > 0)


def test_reference_is_base_with_lora():
    lcfg = lora.LoraConfig(rank=2, alpha=4.0, targets=("q_proj", "down_proj"))
    cfg = ts.step_config(max_completion_length=T, lora=lcfg)
    params0, div, state = _setup(cfg, coef=0.5)
    params0 = jax.tree.map(np.array, params0)  # the state (and its buffers) is donated
    assert {x.shape for x in jax.tree.leaves(state.params)} == {(NL, E, 2), (NL, 2, E)}
    logprobs = ts.make_compute_logprobs(toy_apply, cfg)
    batch = toy_batch(jax.random.PRNGKey(4))
    pol0, ref0, _ = logprobs(state, batch["input_ids"], batch["attention_mask"], T)
    np.testing.assert_allclose(pol0, ref0, atol=1e-6)  # B = 0: the initial policy is the base
    update = ts.make_update(toy_apply, div, SGD, cfg)
    for i in range(3):
        state, metrics = update(state, batch, jax.random.PRNGKey(i))
    pol, ref, _ = logprobs(state, batch["input_ids"], batch["attention_mask"], T)
    np.testing.assert_allclose(ref, ref0, rtol=1e-6, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, state.frozen, params0)
    assert float(jnp.max(jnp.abs(pol - ref))) > 1e-3
    assert float(metrics["div/mean"]) > 0


def test_non_finite_step_is_skipped_and_counted():
    cfg = ts.step_config(max_completion_length=T)
    opt = make_optimizer(OptimConfig(lr=1e-2, schedule="constant", warmup_ratio=0.0))
    _, div, state = _setup(cfg, optimizer=opt)
    update = ts.make_update(toy_apply, div, opt, cfg)
    good = toy_batch(jax.random.PRNGKey(5))
    bad = dict(good, advantages=good["advantages"].at[2].set(jnp.nan))
    state, m = update(state, good, jax.random.PRNGKey(0))
    before = _copy(state)
    for i in range(2):
        state, m = update(state, bad, jax.random.PRNGKey(0))
        assert int(state.skipped_in_row) == i + 1
    jax.tree.map(np.testing.assert_array_equal, state.params, before.params)
    jax.tree.map(np.testing.assert_array_equal, state.opt_state, before.opt_state)
    assert int(state.step) == 1 and float(m["train/skipped_steps"]) == 2
    ts.check_skips(m, max_in_row=3)
    with pytest.raises(RuntimeError, match="2 consecutive optimizer steps skipped"):
        ts.check_skips(m, max_in_row=2)
    state, m = update(state, good, jax.random.PRNGKey(0))
    assert int(state.skipped_in_row) == 0 and float(m["train/skipped_steps"]) == 2


def test_metrics_and_no_retrace_over_divergence_params():
    cfg = ts.step_config(max_completion_length=T, importance_sampling="sequence")
    _, div, state = _setup(cfg, div_name="neural_mirror")
    traces = []

    def apply_counting(p, i, m):
        traces.append(1)
        return toy_apply(p, i, m)

    update = ts.make_update(apply_counting, div, SGD, cfg)
    batch = toy_batch(jax.random.PRNGKey(6))
    state, m = update(state, batch, jax.random.PRNGKey(0))
    n_traces = len(traces)
    state = dataclasses.replace(
        state,
        div_params=jax.tree.map(lambda x: 2 * x, state.div_params),
        div_coef=jnp.float32(3.0),
    )
    state, m = update(state, batch, jax.random.PRNGKey(1))
    assert len(traces) == n_traces  # new mirror params / coefficient: no retrace
    want = {
        "train/loss", "train/policy_loss", "div/mean", "train/entropy", "clip/low_frac",
        "clip/high_frac", "ratio/mean", "ratio/min", "ratio/max",
        "train/grad_norm", "train/lr", "train/tokens",
        "train/skipped_steps",
    }  # fmt: skip
    assert want <= set(m)
    assert all(np.ndim(v) == 0 and np.isfinite(float(v)) for v in m.values())
    assert float(m["train/tokens"]) == float(jnp.sum(batch["completion_mask"]))


def test_schedules():
    c = OptimConfig(lr=1.0, schedule="cosine", warmup_ratio=0.1)
    s = make_optimizer(c, total_steps=100).schedule
    assert float(s(0)) == 0 and float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0) and float(s(55)) == pytest.approx(0.5)
    assert float(s(100)) == pytest.approx(0.0, abs=1e-7)
    s = make_optimizer(dataclasses.replace(c, schedule="linear"), total_steps=100).schedule
    assert float(s(55)) == pytest.approx(0.5)
    s = make_optimizer(
        dataclasses.replace(c, schedule="constant", warmup_ratio=0.0), total_steps=100
    ).schedule
    assert float(s(0)) == pytest.approx(1.0) and float(s(99)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="schedule"):
        OptimConfig(schedule="step")


def test_pure_update_vmaps_over_a_population():
    cfg = ts.step_config(max_completion_length=T)
    _, div, state = _setup(cfg, div_name="prob_l2", coef=0.0)
    # a reference away from the policy, so the divergence has a gradient at the first step
    state = dataclasses.replace(state, frozen=toy_params(jax.random.PRNGKey(1)))
    pop = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    pop = dataclasses.replace(pop, div_coef=jnp.array([0.0, 50.0]))
    update = jax.jit(jax.vmap(ts.make_update(toy_apply, div, SGD, cfg, jit=False), (0, None, None)))
    batch = toy_batch(jax.random.PRNGKey(7))
    pop, m = update(pop, batch, jax.random.PRNGKey(0))
    assert m["train/loss"].shape == (2,)
    single, _ = ts.make_update(toy_apply, div, SGD, cfg)(state, batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(pop.params["head"][0], single.params["head"], atol=1e-6)
    assert not np.allclose(pop.params["head"][1], single.params["head"], atol=1e-4)


def test_init_state_validates_divergence_params():
    cfg = ts.step_config(max_completion_length=T)
    div = dv.get("neural_mirror")
    bad = dict(div.init_params(None), c=jnp.float32(-1.0))
    with pytest.raises(ValueError, match=r"params\['c'\] has negative"):
        ts.init_state(toy_params(jax.random.PRNGKey(0)), SGD, bad, 0.1, cfg, divergence=div)
    with pytest.raises(ValueError, match="coefficient"):
        ts.init_state(toy_params(jax.random.PRNGKey(0)), SGD, {}, -1.0, cfg)


def test_bf16_model_regulariser_gradient_does_not_vanish():
    """Advantages 0, so the whole gradient is lambda * grad D; bf16 logits are cast first."""
    cfg = ts.step_config(max_completion_length=T)
    div = dv.get("neural_mirror")  # reference init: D ~ 1e-9, the hardest case
    bf16 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree)  # noqa: E731
    state = ts.init_state(bf16(toy_params(jax.random.PRNGKey(0))), SGD, div.init_params(None),
                          1.0, cfg)  # fmt: skip
    state = dataclasses.replace(state, frozen=bf16(toy_params(jax.random.PRNGKey(1))))
    batch = dict(toy_batch(jax.random.PRNGKey(8)), advantages=jnp.zeros((N,)))
    state, m = ts.make_update(toy_apply, div, SGD, cfg)(state, batch, jax.random.PRNGKey(0))
    assert float(m["div/mean"]) > 0
    assert float(m["train/grad_norm"]) > 0 and np.isfinite(float(m["train/grad_norm"]))
