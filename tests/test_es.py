"""ES strategies and the mirror search-space adapter (gbmpo_jax.es.strategies): pure, no LLM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbmpo_jax.es import strategies as es
from gbmpo_jax.rl import divergences

STRATEGY_KW = {  # sigma / lr on the scale of the quadratic below
    "open_es": dict(sigma=0.1, lr=0.1),
    "snes": dict(sigma=0.1, lr=1.0),
    "cma_es": dict(sigma=0.1),
    # lr 0.1 converges to d = 0.03 and then, after its first rejection, jumps to d = 8.3: the
    # reused elites are unpaired, so the raw fitness (~10 here) no longer cancels in the
    # gradient (the reference's algorithm, reproduced as is)
    "paper": dict(sigma=0.1, lr=0.02, sigma_decay=0.99),
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


def test_coef_space_is_the_raw_coefficients():
    ad = es.mirror_adapter("coef")
    ref = jax.device_get(divergences.reference_init())
    theta = ad.from_params(ref)
    np.testing.assert_array_equal(theta[: divergences.N_UNITS], ref["v"])
    assert float(theta[-2]) == float(ref["a"]) and float(theta[-1]) == float(ref["c"])
    back = jax.device_get(ad.to_params(theta + 0.25))  # additive: every coefficient + 0.25
    for k in es.KEYS:
        np.testing.assert_allclose(back[k], np.asarray(ref[k]) + 0.25, rtol=1e-6)
    with pytest.raises(ValueError, match="search space"):
        es.mirror_adapter("log")


@pytest.mark.parametrize("name", sorted(es.STRATEGIES))
def test_strategy_maximises_a_quadratic(name):
    dim = 16
    # inside the non-negative orthant (the paper ES projects onto it) and positive near the
    # start (the paper ES's raw-fitness gradient only counts f > 0); the evosax strategies
    # are rank-based, so the offset does not change them
    target = 1.0 + jnp.linspace(-1.0, 1.0, dim)
    fit = lambda x: 10.0 - jnp.sum((x - target) ** 2, axis=-1)  # noqa: E731
    s = es.get(name, 16, dim=dim, **STRATEGY_KW[name])
    state = s.init(jax.random.key(0), jnp.ones(dim))
    d0 = 10.0 - float(fit(s.mean(state)))
    for g in range(40):
        k1, k2 = jax.random.split(jax.random.key(g + 1))
        pop, state = s.ask(k1, state)
        assert pop.shape == (16, dim)
        state, m = s.tell(k2, pop, fit(pop), state)
        assert {"es/sigma", "es/update_norm"} <= set(m)
    d1 = 10.0 - float(fit(s.mean(state)))
    assert d1 < 0.5 * d0, (name, d0, d1)  # d0 = 6.04: at least halve the squared distance


def test_paper_es_reproduces_a_hand_computed_trace():
    """P = 4 (K = 2 elites), D = 2, sigma0 = 0.5, decay 0.99, lr = 0.4, phi0 = (1, 0.2), toy
    fitness f(x) = 1 - (x0 - 1)^2 - x1, fixed base perturbations per generation.

    gen 1 (sigma 0.5), e1 = (1, -2), e2 = (0, 2); rows e1, -e1, e2, -e2:
      x = (1.5, -0.8 -> 0), (0.5, 1.2), (1, 1.2), (1, -0.8 -> 0)
      f = 0.75, -0.45, -0.2, 1.0; mean 0.275 > -inf: accepted, best 0.275
      successful pairs (f > 0): (0.75, (1, -2)), (1.0, (0, -2)): n = 2, n sigma = 1
      g = (0.75, -1.5 - 2.0) = (0.75, -3.5); phi1 = max((1, 0.2) + 0.4 g, 0) = (1.3, 0)
    gen 2 (sigma 0.495), e1 = (2, 0), e2 = (0, 2):
      x = (2.29, 0), (0.31, 0), (1.3, 0.99), (1.3, -0.99 -> 0)
      f = 1 - 1.29^2 = -0.6641, 1 - 0.69^2 = 0.5239, 0.91 - 0.99 = -0.08, 0.91
      mean 0.17245 <= 0.275: rejected; phi stays (1.3, 0), best stays 0.275
      elites (ascending): (x (0.31, 0), eps (-2, 0), f 0.5239), ((1.3, 0), (0, -2), 0.91)
    gen 3 (sigma 0.49005): rows 0-1 are the elites, fitness reused (the caller's -100 is
      ignored); one new pair e1 = (0, 1) (the second base row is unused):
      x = (1.3, 0.49005), (1.3, -0.49005 -> 0); f = 0.91 - 0.49005 = 0.41995, 0.91
      mean (0.5239 + 0.91 + 0.41995 + 0.91) / 4 = 0.6909625 > 0.275: accepted, all 4 count
      g = (0.5239 (-2, 0) + 0.91 (0, -2) + 0.41995 (0, 1) + 0.91 (0, -1)) / (4 * 0.49005)
      phi3 = max((1.3, 0) + 0.4 g, 0)
    """
    base = jnp.array(
        [[[1.0, -2.0], [0.0, 2.0]], [[2.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [9.0, 9.0]]]
    )
    noise = lambda key, shape: base[jax.random.key_data(key)[-1] - 1]  # noqa: E731
    fit = lambda x: 1.0 - (x[:, 0] - 1.0) ** 2 - x[:, 1]  # noqa: E731
    s = es.paper_es(4, sigma=0.5, lr=0.4, sigma_decay=0.99, dim=2, noise=noise)
    st = s.init(jax.random.key(0), jnp.array([1.0, 0.2]))
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)  # noqa: E731

    pop, st = s.ask(jax.random.key(1), st)
    close(pop, [[1.5, 0.0], [0.5, 1.2], [1.0, 1.2], [1.0, 0.0]])
    f = fit(pop)
    close(f, [0.75, -0.45, -0.2, 1.0])
    st, m = s.tell(jax.random.key(0), pop, f, st)
    assert float(m["es/accepted"]) == 1.0 and float(m["es/successful"]) == 2.0
    close(m["es/grad_norm"], np.hypot(0.75, 3.5))
    close(st.mean, [1.3, 0.0])
    close(st.best_fitness, 0.275)
    close(st.sigma, 0.495)

    pop, st = s.ask(jax.random.key(2), st)
    assert not np.asarray(s.reused(st)[0]).any()
    close(pop, [[2.29, 0.0], [0.31, 0.0], [1.3, 0.99], [1.3, 0.0]])
    f = fit(pop)
    close(f, [-0.6641, 0.5239, -0.08, 0.91])
    st, m = s.tell(jax.random.key(0), pop, f, st)
    assert float(m["es/accepted"]) == 0.0 and float(m["es/update_norm"]) == 0.0
    close(st.mean, [1.3, 0.0])
    close(st.best_fitness, 0.275)
    close(st.elite_fitness, [0.5239, 0.91])
    close(st.elite_eps, [[-2.0, 0.0], [0.0, -2.0]])
    close(st.sigma, 0.49005)

    pop, st = s.ask(jax.random.key(3), st)
    close(pop, [[0.31, 0.0], [1.3, 0.0], [1.3, 0.49005], [1.3, 0.0]])
    mask, known = s.reused(st)
    assert np.asarray(mask).tolist() == [True, True, False, False]
    close(np.asarray(known)[:2], [0.5239, 0.91])
    f = fit(pop).at[:2].set(-100.0)  # the elites are not re-measured
    st, m = s.tell(jax.random.key(0), pop, f, st)
    assert float(m["es/accepted"]) == 1.0 and float(m["es/reused"]) == 2.0
    assert float(m["es/successful"]) == 4.0
    g = np.array([0.5239 * -2.0, 0.91 * -2.0 + 0.41995 - 0.91]) / (4 * 0.49005)
    close(st.mean, np.maximum(np.array([1.3, 0.0]) + 0.4 * g, 0.0))
    close(st.best_fitness, 0.6909625)
    assert not bool(st.has_elites)
    close(st.sigma, 0.5 * 0.99**3)


def test_paper_es_counts_only_successful_pairs_and_failed_runs_as_zero():
    s = es.paper_es(4, sigma=1.0, lr=1.0, dim=1, noise=lambda k, sh: jnp.ones(sh))
    st = s.init(jax.random.key(0), jnp.array([5.0]))
    pop, st = s.ask(jax.random.key(1), st)  # eps = 1, -1, 1, -1
    st, m = s.tell(jax.random.key(0), pop, jnp.array([2.0, 0.0, jnp.nan, -1.0]), st)
    # one successful pair (2.0, +1): g = 2 / (1 * 1); mean counts NaN as 0: 1/4
    assert float(m["es/successful"]) == 1.0
    np.testing.assert_allclose(float(st.mean[0]), 7.0)
    np.testing.assert_allclose(float(st.best_fitness), 0.25)


def test_paper_es_defaults_are_the_reference_constants():
    s = es.get("paper", 10)
    st = s.init(jax.random.key(0), jnp.full(es.DIM, 0.005))
    assert float(st.sigma) == pytest.approx(0.01) and s.space == "coef"
    pop, st = s.ask(jax.random.key(1), st)
    assert pop.shape == (10, es.DIM) and float(pop.min()) >= 0.0
    d0, d1 = np.asarray(pop[0]) - 0.005, np.asarray(pop[1]) - 0.005
    both = (pop[0] > 0) & (pop[1] > 0)  # unclipped coordinates: an antithetic pair
    np.testing.assert_allclose(d0[both], -d1[both], atol=1e-7)
    # additive sigma 0.01 on the coefficients (a relative step would be ~100x smaller)
    # max(d0, d1) = 0.01 |eps| (the upper side is never clipped): mean 0.01 sqrt(2 / pi)
    assert 0.0065 < np.mean(np.maximum(d0, d1)) < 0.0095
    assert es.paper_elites(10) == 2 and es.paper_elites(16) == 4 and es.paper_elites(4) == 2
    with pytest.raises(ValueError, match="meta.pop_size"):
        es.get("paper", 2)


def test_bad_strategy_settings_name_the_field():
    with pytest.raises(ValueError, match="meta.strategy"):
        es.get("nope", 8)
    with pytest.raises(ValueError, match="meta.pop_size"):
        es.get("open_es", 7)


def test_scale_space_adds_one_shared_log_scale():
    """softplus_scale: z [381]; z[380] = s multiplies every coefficient by e^s, and the
    starting point (s = 0) is the map itself."""
    from gbmpo_jax.rl import divergences

    ref = divergences.reference_init()
    ad = es.mirror_adapter("softplus_scale")
    z = ad.from_params(ref)
    assert ad.dim == z.shape[0] == es.DIM + 1 and float(z[-1]) == 0.0
    back = ad.to_params(z)
    for k in es.KEYS:
        np.testing.assert_allclose(back[k], ref[k], rtol=1e-5, atol=1e-9)
    scaled = ad.to_params(z.at[-1].set(np.log(3.0)))
    for k in es.KEYS:
        np.testing.assert_allclose(scaled[k], 3.0 * np.asarray(back[k]), rtol=1e-5)
    strat = es.get("open_es", 4, dim=ad.dim)
    pop, _ = strat.ask(jax.random.key(0), strat.init(jax.random.key(1), z))
    assert pop.shape == (4, es.DIM + 1)
    divergences.validate_mirror_params(jax.tree.map(lambda x: x[0], ad.to_params(pop)))
