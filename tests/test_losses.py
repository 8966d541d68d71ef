"""Clipped surrogate + divergence: normalisers and gradients checked by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbmpo_jax.rl import divergences as dv
from gbmpo_jax.rl import losses as L

MASK = np.array([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]], np.float32)
ADV = np.array([1.0, 2.0, -1.0], np.float32)


def _loss(loss_type, mask=MASK, truncated=None, num_items=None, **kw):
    cfg = L.ObjectiveConfig(loss_type=loss_type, max_completion_length=6, **kw)
    m = L.loss_mask(jnp.asarray(mask), truncated, cfg)
    w = L.token_weights(m, cfg, num_items)
    logp = jnp.full(mask.shape, -1.0)  # on-policy, lambda = 0: l_{i,t} = -A_i
    kl = dv.get("kl")
    loss, sums = L.loss_fn(logp, logp, logp, jnp.asarray(ADV), m, w, kl, {}, 0.0, cfg)
    return float(loss), sums


def test_normalisers_by_hand():
    # sum_{i,t} m l = -(3 * 1 + 1 * 2 + 4 * (-1)) = -1
    assert _loss("dr_grpo")[0] == pytest.approx(-1 / (3 * 6))
    assert _loss("bnpo")[0] == pytest.approx(-1 / 8)
    assert _loss("dapo", num_items=16.0)[0] == pytest.approx(-1 / 16)
    assert _loss("grpo")[0] == pytest.approx((-1 - 2 + 1) / 3)


def test_truncated_rows_masked():
    trunc = jnp.array([False, False, True])
    assert _loss("grpo", truncated=trunc)[0] == pytest.approx((-1 - 2 + 0) / 3)
    assert _loss("bnpo", truncated=trunc)[0] == pytest.approx(-5 / 4)
    off = _loss("bnpo", truncated=trunc, mask_truncated_completions=False)[0]
    assert off == pytest.approx(-1 / 8)


def test_dapo_needs_num_items():
    with pytest.raises(ValueError, match="num_items_in_batch"):
        _loss("dapo")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="loss_type"):
        L.ObjectiveConfig(loss_type="mean")
    with pytest.raises(ValueError, match="importance_sampling"):
        L.ObjectiveConfig(importance_sampling="seq")
    with pytest.raises(ValueError, match="max_completion_length"):
        cfg = L.ObjectiveConfig(max_completion_length=4)
        L.token_weights(jnp.ones((2, 5)), cfg)


def test_clip_and_sequence_ratio_by_hand():
    cfg_tok = L.ObjectiveConfig(loss_type="bnpo", max_completion_length=2)
    old = jnp.zeros((2, 2))
    logp = jnp.array([[0.5, -0.5], [0.1, 0.0]])  # ratios e^.5=1.65 (clipped), e^-.5=.61
    adv = jnp.array([1.0, -1.0])
    mask = jnp.ones((2, 2))
    t = L.per_token_terms(logp, old, old, adv, mask, dv.get("kl"), {}, 0.0, cfg_tok)
    r = np.exp(np.asarray(logp))
    want = -np.minimum(r * [[1], [-1]], np.clip(r, 0.8, 1.2) * [[1], [-1]])
    np.testing.assert_allclose(t["policy"], want, rtol=1e-6)
    np.testing.assert_array_equal(t["high_clip"], [[1, 0], [0, 0]])
    np.testing.assert_array_equal(t["low_clip"], [[0, 0], [0, 0]])
    cfg_seq = L.ObjectiveConfig(importance_sampling="sequence", max_completion_length=2)
    mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    t = L.per_token_terms(logp, old, old, adv, mask, dv.get("kl"), {}, 0.0, cfg_seq)
    np.testing.assert_allclose(t["ratio"][0], [1.0, 1.0], rtol=1e-6)  # exp(mean(.5, -.5))
    np.testing.assert_allclose(t["ratio"][1], [np.exp(0.1)] * 2, rtol=1e-6)


@pytest.mark.parametrize("div_name", ["kl", "prob_l2"])
def test_toy_categorical_gradient_matches_hand_derivation(div_name):
    """Per-token categorical policies pi_{i,t} = softmax(theta_{i,t}), V = 5.

    dl/dtheta = W (-A rho 1[unclipped] + lambda dD/dlogp) (e_y - pi), with
    dD/dlogp = 1 - p_r / p (k3) or 2 (p - p_r) p (prob_l2).
    """
    n, t, v, lam = 3, 4, 5, 0.3
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    theta = jax.random.normal(k1, (n, t, v))
    theta_old = theta + 1.0 * jax.random.normal(k2, (n, t, v))
    theta_ref = jax.random.normal(k3, (n, t, v))
    y = jax.random.randint(k4, (n, t), 0, v)
    adv = jnp.array([1.0, -0.5, 2.0])
    mask = jnp.array(MASK[:, :t])
    cfg = L.ObjectiveConfig(loss_type="dr_grpo", max_completion_length=t)
    div = dv.get(div_name)
    w = L.token_weights(mask, cfg)

    def lp(th):
        return jnp.take_along_axis(jax.nn.log_softmax(th), y[..., None], -1)[..., 0]

    def total(th):
        return L.loss_fn(lp(th), lp(theta_old), lp(theta_ref), adv, mask, w, div, {}, lam, cfg)[0]

    got = jax.jit(jax.grad(total))(theta)
    pi = np.asarray(jax.nn.softmax(theta), np.float64)
    p, p_old, p_ref = (np.exp(np.asarray(lp(x), np.float64)) for x in (theta, theta_old, theta_ref))
    rho = p / p_old
    a = np.asarray(adv, np.float64)[:, None]
    unclipped = np.where(a > 0, rho <= 1.2, rho >= 0.8)
    d_pol = -a * rho * unclipped
    d_div = 1 - p_ref / p if div_name == "kl" else 2 * (p - p_ref) * p
    coef = np.asarray(w, np.float64) * (d_pol + lam * d_div)
    onehot = np.eye(v)[np.asarray(y)]
    want = coef[..., None] * (onehot - pi)
    assert unclipped.sum() < unclipped.size  # the clip binds somewhere
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_traced_coefficients_vmap_without_retrace():
    traces = []
    cfg = L.ObjectiveConfig(max_completion_length=6)
    div = dv.get("neural_mirror")
    m = jnp.asarray(MASK)
    w = L.token_weights(m, cfg)
    logp = jnp.log(jnp.linspace(0.1, 0.9, 18).reshape(3, 6))

    @jax.jit
    def f(params, coef):
        traces.append(1)
        return L.loss_fn(logp, logp, logp - 0.2, jnp.asarray(ADV), m, w, div, params, coef, cfg)[0]

    p0 = dv.reference_init()
    pop = jax.tree.map(lambda x: jnp.stack([x, 3 * x]), p0)
    out = jax.vmap(f)(pop, jnp.array([1.0, 2.0]))
    f(p0, 1.0)
    f(jax.tree.map(lambda x: 2 * x, p0), 5.0)
    assert len(traces) == 2  # one for the vmapped call, one for the plain call
    assert float(out[1]) != float(out[0])
