"""ES strategies and the mirror search-space adapter (gbmpo_jax.es): pure, no LLM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbmpo_jax import divergences, es

STRATEGY_KW = {  # sigma / lr on the scale of the quadratic below
    "open_es": dict(sigma=0.1, lr=0.1),
    "snes": dict(sigma=0.1, lr=1.0),
    "cma_es": dict(sigma=0.1),
    "paper": dict(sigma=0.1, lr=2.0, sigma_decay=0.99),
}


def test_adapter_maps_z0_to_the_reference_init():
    ad = es.mirror_adapter()
    ref = jax.device_get(divergences.reference_init())
    z0 = ad.from_params(ref)
    assert z0.shape == (es.DIM,)
    back = jax.device_get(ad.to_params(z0))
    for k in es.KEYS:
        want = np.maximum(np.asarray(ref[k]), es.MIN_COEF)
        np.testing.assert_allclose(back[k], want, rtol=2e-3, atol=1e-8)


def test_any_perturbation_is_a_valid_convex_map_with_nonnegative_divergence():
    ad = es.mirror_adapter()
    z0 = ad.from_params(jax.device_get(divergences.reference_init()))
    pop = z0 + 5.0 * jax.random.normal(jax.random.key(0), (16, es.DIM))
    pop = pop.at[0].set(-50.0).at[1].set(20.0)  # extremes: underflow to 0, large coefficients
    params = jax.device_get(ad.to_params(pop))
    lp = jnp.log(jax.random.uniform(jax.random.key(1), (64,), minval=1e-6, maxval=1.0))
    rp = jnp.log(jax.random.uniform(jax.random.key(2), (64,), minval=1e-6, maxval=1.0))
    for i in range(16):
        divergences.validate_mirror_params({k: v[i] for k, v in params.items()})
    d = jax.jit(jax.vmap(divergences.mirror_divergence, in_axes=(None, None, 0)))(lp, rp, params)
    assert d.shape == (16, 64)
    assert bool(jnp.all(jnp.isfinite(d))) and float(d.min()) >= 0.0


@pytest.mark.parametrize("name", sorted(es.STRATEGIES))
def test_strategy_maximises_a_quadratic(name):
    dim = 16
    target = jnp.linspace(-1.0, 1.0, dim)
    fit = lambda x: -jnp.sum((x - target) ** 2, axis=-1)  # noqa: E731
    s = es.get(name, 16, dim=dim, **STRATEGY_KW[name])
    state = s.init(jax.random.key(0), jnp.zeros(dim))
    f0 = float(fit(s.mean(state)))
    for g in range(40):
        k1, k2 = jax.random.split(jax.random.key(g + 1))
        pop, state = s.ask(k1, state)
        assert pop.shape == (16, dim)
        state, m = s.tell(k2, pop, fit(pop), state)
        assert {"es/sigma", "es/update_norm"} <= set(m)
    f1 = float(fit(s.mean(state)))
    assert f1 > 0.5 * f0, (name, f0, f1)  # f0 = -5.7: at least halve the distance


def test_paper_es_rejects_a_worse_generation_and_keeps_elites():
    s = es.paper_es(4, sigma=0.1, lr=1.0, dim=3)
    st = s.init(jax.random.key(0), jnp.zeros(3))
    pop, st = s.ask(jax.random.key(1), st)
    st, m = s.tell(jax.random.key(2), pop, jnp.array([1.0, 0.0, 0.0, 0.0]), st)
    assert float(m["es/accepted"]) == 1.0
    pop2, _ = s.ask(jax.random.key(3), st)
    st2, m2 = s.tell(jax.random.key(4), pop2, jnp.array([-1.0, -1.0, -1.0, -1.0]), st)
    assert float(m2["es/accepted"]) == 0.0
    # rejected: the mean moves to the average of the two best members seen (pop[0] first)
    np.testing.assert_allclose(st2.mean, (pop[0] + st2.elites[1]) / 2, rtol=1e-6)
    assert float(st2.elite_fitness[0]) == 1.0
    np.testing.assert_allclose(float(st2.sigma), 0.1 * 0.99**2, rtol=1e-6)


def test_bad_strategy_settings_name_the_field():
    with pytest.raises(ValueError, match="meta.strategy"):
        es.get("nope", 8)
    with pytest.raises(ValueError, match="meta.pop_size"):
        es.get("open_es", 7)
