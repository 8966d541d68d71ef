"""Divergence contracts (every registry entry) and value tests against exact references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbmpo_jax.rl import divergences as dv

mp = pytest.importorskip("mpmath")


def _neg_entropy(y, params):
    return y * jnp.log(y)


# options a registry entry needs to be constructed (everything else builds with defaults)
OPTIONS = {"bregman": {"potential": _neg_entropy}, "neural_mirror": {"init": "random"}}
POINTWISE_NONNEG = {"kl", "k2", "prob_l2", "neural_mirror", "bregman"}  # k1 is signed


def _pair(key, shape=(3, 5)):
    k1, k2 = jax.random.split(key)
    lp = jnp.log(jax.random.uniform(k1, shape, minval=1e-4, maxval=1.0))
    lr = jnp.log(jax.random.uniform(k2, shape, minval=1e-4, maxval=1.0))
    return lp, lr


@pytest.mark.parametrize("name", sorted(dv.REGISTRY))
def test_contract(name):
    div = dv.get(name, **OPTIONS.get(name, {}))
    params = div.init_params(jax.random.PRNGKey(0))
    div.validate(params)
    lp, lr = _pair(jax.random.PRNGKey(1))
    traces = []

    def f(a, b, p):
        traces.append(1)
        return div.per_token(a, b, p)

    jf = jax.jit(f)
    d = jf(lp, lr, params)
    assert d.shape == lp.shape and d.dtype == jnp.float32
    assert np.all(np.isfinite(d))
    d_same = jf(lr, lr, params)
    np.testing.assert_allclose(d_same, 0.0, atol=1e-7)
    if name in POINTWISE_NONNEG:
        assert np.all(np.asarray(d) >= 0)
    else:  # k1: its expectation under the policy is KL >= 0
        logits = jax.random.normal(jax.random.PRNGKey(2), (7,))
        lq, lpol = jax.nn.log_softmax(0.3 * logits), jax.nn.log_softmax(logits)
        assert float(jnp.sum(jnp.exp(lpol) * div.per_token(lpol, lq, params))) > 0
    g = jax.jit(jax.grad(lambda a: jnp.sum(jf(a, lr, params))))(lp)
    assert np.all(np.isfinite(g)) and np.any(g != 0)
    # new values of the (traced) params and inputs: no retrace
    params2 = jax.tree.map(lambda x: x * 1.5, params)
    jf(lp + 0.01, lr, params2)
    assert len(traces) == 1
    # vmap over a population of params (and inputs where there are no params)
    pop = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), params)
    if jax.tree.leaves(params):
        out = jax.jit(jax.vmap(lambda p: div.per_token(lp, lr, p)))(pop)
        np.testing.assert_allclose(out[0], d, rtol=1e-3, atol=1e-6)
    else:
        out = jax.jit(jax.vmap(lambda a: div.per_token(a, lr, params)))(jnp.stack([lp, lp]))
        np.testing.assert_allclose(out[1], d, rtol=1e-3, atol=1e-6)


def test_get_errors():
    with pytest.raises(ValueError, match="unknown divergence"):
        dv.get("nope")
    with pytest.raises(ValueError, match="options"):
        dv.get("kl", colour="red")


def test_kl_is_bregman_of_neg_log_on_ratio():
    lp, lr = _pair(jax.random.PRNGKey(3))
    kl = dv.get("kl").per_token(lp, lr, {})
    br = dv.bregman(lambda y, _: -jnp.log(y), argument="ratio").per_token(lp, lr, {})
    np.testing.assert_allclose(kl, br, rtol=1e-4, atol=1e-6)
    x = np.asarray(lr, np.float64) - np.asarray(lp, np.float64)
    np.testing.assert_allclose(kl, np.exp(x) - x - 1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dv.get("k1").per_token(lp, lr, {}), -x, rtol=1e-6)
    np.testing.assert_allclose(dv.get("k2").per_token(lp, lr, {}), x * x / 2, rtol=1e-5)


def test_kl_small_differences_accurate():
    lr = jnp.full((4,), -1.0)
    x = np.array([1e-6, -1e-5, 1e-4, -3e-3], np.float32)
    lp = lr - x
    d = dv.get("kl").per_token(lp, lr, {})
    x64 = np.asarray(lr, np.float64) - np.asarray(lp, np.float64)  # the x the inputs carry
    np.testing.assert_allclose(d, np.expm1(x64) - x64, rtol=1e-5)


def test_prob_l2_is_bregman_of_square():
    lp, lr = _pair(jax.random.PRNGKey(4))
    a = dv.get("prob_l2").per_token(lp, lr, {})
    b = dv.bregman(lambda y, _: y * y).per_token(lp, lr, {})
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(a, (np.exp(lp) - np.exp(lr)) ** 2, rtol=1e-4, atol=1e-9)


def test_reference_init_matches_torch():
    p = dv.reference_init()
    assert sum(np.size(x) for x in p.values()) == 380
    assert all(float(jnp.min(x)) >= 0 and float(jnp.max(x)) < 0.01 for x in p.values())
    torch = pytest.importorskip("torch")
    torch.manual_seed(42)
    want = [torch.rand(n) * 0.01 for n in (126, 126, 126, 1, 1)]
    for k, w in zip("vwbac", want, strict=True):
        np.testing.assert_array_equal(np.asarray(p[k]).reshape(-1), w.numpy())


def test_validate_mirror_params():
    p = dv.reference_init()
    dv.validate_mirror_params(p)
    with pytest.raises(ValueError, match=r"params\['w'\] has negative"):
        dv.validate_mirror_params(dict(p, w=p["w"].at[3].set(-1e-3)))
    with pytest.raises(ValueError, match="shape"):
        dv.validate_mirror_params(dict(p, a=jnp.zeros((1,))))


def _big_params(key, w_max=10.0, b_max=1.0, shift=0.0):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "v": jax.random.uniform(k1, (126,)),
        "w": jax.random.uniform(k2, (126,)) * w_max - shift,
        "b": jax.random.uniform(k3, (126,)) * b_max - shift / 6,
        "a": jnp.float32(0.3),
        "c": jnp.float32(0.2),
    }


def test_neural_mirror_equals_generic_bregman_fp64():
    """Where the direct fp64 formula is itself accurate (|p - p_r| not tiny)."""
    ps = np.array([1e-3, 0.05, 0.3, 0.7, 1.0])
    lp, lr = (np.log(x).ravel() for x in np.meshgrid(ps, ps * 0.8))
    for params in (dv.reference_init(), _big_params(jax.random.PRNGKey(5))):
        with jax.enable_x64():
            p64 = {k: jnp.asarray(np.asarray(v), jnp.float64) for k, v in params.items()}
            generic = jax.jit(dv.bregman(dv.mirror_potential).per_token)(
                jnp.asarray(lp), jnp.asarray(lr), p64
            )
            stable = jax.jit(dv.mirror_divergence)(jnp.asarray(lp), jnp.asarray(lr), p64)
        np.testing.assert_allclose(stable, generic, rtol=2e-6)


def _exact(lp, lr, params):
    """D and dD/dlogp in 30-digit arithmetic from the direct formulas (arXiv 2602.04380, sec. 2)."""
    mp.mp.dps = 30
    y, y0 = mp.e ** mp.mpf(float(lp)), mp.e ** mp.mpf(float(lr))
    v, w, b = (np.asarray(params[k], np.float64) for k in "vwb")
    a, c, eps = mp.mpf(float(params["a"])), mp.mpf(float(params["c"])), mp.mpf("1e-3")

    def S(i, u):
        up = max(u, 0)
        return [
            u**4 / 4,
            u**3 / 3,
            mp.mpf(2) / 3 * up ** mp.mpf(1.5),
            mp.mpf(3) / 4 * up ** (mp.mpf(4) / 3),
            (up + eps) * mp.log(up + eps) - up - eps if u > 0 else eps * mp.log(eps) - eps + u * mp.log(eps),
            mp.e**u,
        ][i]  # fmt: skip

    def s(i, u):
        up = max(u, 0)
        return [u**3, u**2, mp.sqrt(up), up ** (mp.mpf(1) / 3), mp.log(up + eps), mp.e**u][i]

    d = g = mp.mpf(0)
    for j in range(126):
        i, wj, bj, vj = j // 21, mp.mpf(w[j]), mp.mpf(b[j]), mp.mpf(v[j])
        u, u0 = wj * y + bj, wj * y0 + bj
        d += vj * (S(i, u) - S(i, u0) - s(i, u0) * (u - u0)) / wj
        g += vj * (s(i, u) - s(i, u0))
    d += a / 2 * (y - y0) ** 2 + c * (y * mp.log(y / y0) - (y - y0))
    g += a * (y - y0) + c * mp.log(y / y0)
    return float(d), float(g * y)


@pytest.mark.parametrize("which", ["reference", "large", "crossing"])
def test_neural_mirror_fp32_accuracy(which):
    params = {
        "reference": dv.reference_init(),
        "large": _big_params(jax.random.PRNGKey(6)),  # w up to 10, b up to 1
        "crossing": _big_params(jax.random.PRNGKey(7), shift=3.0),  # u crosses 0 (not convex)
    }[which]
    lps = np.log(np.array([1e-6, 1e-3, 0.1, 0.7, 1.0]))
    f = jax.jit(dv.mirror_divergence)
    g = jax.jit(jax.grad(dv.mirror_divergence))
    worst_d = worst_g = 0.0
    for lr in lps:
        for lp in lps:
            for dl in (1e-5, -1e-3, 3e-2):  # includes p very close to p_ref
                a, b = np.float32(min(lp + dl, 0.0)), np.float32(lr)
                if a == b:
                    continue
                ed, eg = _exact(a, b, params)
                worst_d = max(worst_d, abs(float(f(a, b, params)) - ed) / abs(ed))
                worst_g = max(worst_g, abs(float(g(a, b, params)) - eg) / abs(eg))
    # required: 1e-3; measured on CPU: values <= 3.2e-6, gradients <= 4.4e-5 (crossing)
    assert worst_d <= 1e-4
    assert worst_g <= 1e-4 if which != "crossing" else worst_g <= 1e-3


def test_neural_mirror_bf16_logp_gradient_nonzero():
    params = dv.reference_init()
    lp = jnp.asarray([-0.70, -2.3, -0.1], jnp.bfloat16)
    lr = jnp.asarray([-0.69, -2.2, -0.12], jnp.float32)
    f = jax.jit(jax.value_and_grad(lambda x: jnp.sum(dv.mirror_divergence(x, lr, params))))
    _, g = f(lp)
    assert g.dtype == jnp.bfloat16
    assert np.all(np.asarray(g, np.float32) != 0)
    d = jax.jit(dv.mirror_divergence)(lp, lr, params)
    assert np.all(np.asarray(d) > 0)


def test_neural_mirror_zero_slope_units_finite():
    """w = 0 or b = 0 units (reachable by a clamping ES adapter) stay finite with gradients."""
    p = dv.reference_init()
    p = dict(p, w=p["w"].at[::5].set(0.0), b=p["b"].at[::3].set(0.0))
    lp, lr = _pair(jax.random.PRNGKey(8))
    d = jax.jit(dv.mirror_divergence)(lp, lr, p)
    g = jax.jit(jax.grad(lambda x: jnp.sum(dv.mirror_divergence(x, lr, p))))(lp)
    assert np.all(np.isfinite(d)) and np.all(d >= 0) and np.all(np.isfinite(g))
