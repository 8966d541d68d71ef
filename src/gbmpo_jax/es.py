"""ES strategies over the mirror-map search space (GBMPO, arXiv 2602.04380, section 4).

Every strategy is a `Strategy(name, init, ask, tell)` of pure functions over explicit state,
**maximising** fitness:

* ``init(key, mean [D]) -> state``
* ``ask(key, state) -> (population [P,D], state)``
* ``tell(key, population [P,D], fitness [P], state) -> (state, metrics)``; metrics hold
  ``es/sigma`` and ``es/update_norm`` (||mean_new - mean_old||).
* ``mean(state) -> [D]``

Registry (`STRATEGIES`): ``open_es`` (default; evosax OpenES, antithetic sampling, centered
ranks, Adam), ``snes``, ``cma_es`` (evosax) and ``paper`` (`paper_es`, the reference code's
variant, written here). evosax minimises: `_evosax` negates the fitness, the only place where
the sign flips.

Search space (`MirrorAdapter`): an unconstrained z in R^380 = [v(126), w(126), b(126), a, c]
mapped to coefficients theta = softplus(z) > 0, so every candidate is a convex potential with
D >= 0 under any perturbation (the paper perturbed theta directly and let it go negative).
The inverse z0 = softplus^-1(max(theta0, 1e-6)) makes z0 map back to the reference init
(exactly, except coefficients below 1e-6 which become 1e-6). For theta << 1 softplus(z) ~ e^z,
so a Gaussian step in z is a relative (multiplicative) change of each coefficient.

Deviations from the reference code: 1. the search is in z (above), not in theta;
2. `paper_es` "accept if improved" compares the population's mean fitness with the best
previous one (the reference code's exact bookkeeping is not public); on rejection the mean
moves to the average of the 2 elites (best members seen so far).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gbmpo_jax import divergences

KEYS = ("v", "w", "b", "a", "c")
DIM = 3 * divergences.N_UNITS + 2  # 380
MIN_COEF = 1e-6


# ------------------------------------------------------------------------ search-space adapter
class MirrorAdapter(NamedTuple):
    """z [..., 380] <-> neural-mirror params {"v","w","b": [..., 126], "a","c": [...]}."""

    to_params: Callable[[jax.Array], dict]
    from_params: Callable[[dict], jax.Array]


def _softplus_inv(x):
    x = np.maximum(np.asarray(x, np.float64), MIN_COEF)
    return (x + np.log(-np.expm1(-x))).astype(np.float32)  # log(e^x - 1), stable


def mirror_adapter() -> MirrorAdapter:
    n = divergences.N_UNITS

    def to_params(z):
        theta = jax.nn.softplus(jnp.asarray(z, jnp.float32))
        return {
            "v": theta[..., :n],
            "w": theta[..., n : 2 * n],
            "b": theta[..., 2 * n : 3 * n],
            "a": theta[..., 3 * n],
            "c": theta[..., 3 * n + 1],
        }

    def from_params(params):
        flat = np.concatenate([np.reshape(np.asarray(params[k]), (-1,)) for k in KEYS])
        if flat.shape != (DIM,):
            raise ValueError(f"mirror params flatten to {flat.shape}, need ({DIM},)")
        return jnp.asarray(_softplus_inv(flat))

    return MirrorAdapter(jax.jit(to_params), from_params)


# ------------------------------------------------------------------------ strategy interface
class Strategy(NamedTuple):
    name: str
    init: Callable[[jax.Array, jax.Array], Any]
    ask: Callable[[jax.Array, Any], tuple[jax.Array, Any]]
    tell: Callable[[jax.Array, jax.Array, jax.Array, Any], tuple[Any, dict]]
    mean: Callable[[Any], jax.Array]


def _evosax(name: str, algo, params) -> Strategy:
    """Wraps an evosax 0.3 algorithm (which minimises) as a maximising Strategy."""

    def init(key, mean):
        return algo.init(key, jnp.asarray(mean, jnp.float32), params)

    def ask(key, state):
        return algo.ask(key, state, params)

    def tell(key, population, fitness, state):
        old = state.mean
        # evosax minimises; fitness (accuracy) is maximised: the one sign flip in the system.
        state, _ = algo.tell(key, population, -jnp.asarray(fitness, jnp.float32), state, params)
        return state, {
            "es/sigma": jnp.mean(state.std),
            "es/update_norm": jnp.linalg.norm(state.mean - old),
        }

    return Strategy(name, jax.jit(init), jax.jit(ask), jax.jit(tell), lambda s: s.mean)


def open_es(
    pop_size: int, sigma: float = 0.1, lr: float = 0.05, sigma_decay: float = 1.0, dim: int = DIM
):
    """OpenES (Salimans et al. 2017) via evosax: antithetic pairs, centered ranks, Adam(lr)."""
    from evosax.algorithms import Open_ES

    sched = optax.exponential_decay(sigma, 1, sigma_decay) if sigma_decay != 1.0 else None
    algo = Open_ES(
        pop_size,
        jnp.zeros(dim),
        optimizer=optax.adam(lr),
        std_schedule=sched or optax.constant_schedule(sigma),
    )
    return _evosax("open_es", algo, algo.default_params)


def snes(
    pop_size: int, sigma: float = 0.1, lr: float = 1.0, sigma_decay: float = 1.0, dim: int = DIM
):
    """Separable NES via evosax (sgd(lr) on the natural gradient of the mean)."""
    from evosax.algorithms import SNES

    algo = SNES(pop_size, jnp.zeros(dim), optimizer=optax.sgd(lr))
    return _evosax("snes", algo, algo.default_params.replace(std_init=jnp.asarray(sigma)))


def cma_es(
    pop_size: int, sigma: float = 0.1, lr: float = 1.0, sigma_decay: float = 1.0, dim: int = DIM
):
    """CMA-ES via evosax (full 380x380 covariance; lr is unused)."""
    from evosax.algorithms import CMA_ES

    algo = CMA_ES(pop_size, jnp.zeros(dim))
    return _evosax("cma_es", algo, algo.default_params.replace(std_init=jnp.asarray(sigma)))


class PaperState(NamedTuple):
    mean: jax.Array  # [D]
    sigma: jax.Array  # ()
    best_mean_fitness: jax.Array  # () best population-mean fitness so far (-inf at start)
    elites: jax.Array  # [2,D] best members seen
    elite_fitness: jax.Array  # [2]
    generation: jax.Array  # () int32


def paper_es(
    pop_size: int, sigma: float = 0.01, lr: float = 0.01, sigma_decay: float = 0.99, dim: int = DIM
):
    """The reference code's ES: antithetic pairs, raw-fitness gradient
    g = sum_i f_i eps_i / (P sigma), mean += lr g if the population's mean fitness beats the
    best so far, else mean = average of the 2 elites; sigma *= sigma_decay per generation."""
    if pop_size % 2:
        raise ValueError(f"meta.pop_size={pop_size}: antithetic sampling needs an even size")

    def init(key, mean):
        mean = jnp.asarray(mean, jnp.float32)
        if mean.shape != (dim,):
            raise ValueError(f"paper ES mean has shape {mean.shape}, expected ({dim},)")
        return PaperState(
            mean, jnp.asarray(sigma, jnp.float32), jnp.asarray(-jnp.inf, jnp.float32),
            jnp.stack([mean, mean]), jnp.full((2,), -jnp.inf, jnp.float32),
            jnp.asarray(0, jnp.int32),
        )  # fmt: skip

    def ask(key, state):
        eps = jax.random.normal(key, (pop_size // 2, state.mean.shape[0]))
        return state.mean + state.sigma * jnp.concatenate([eps, -eps]), state

    def tell(key, population, fitness, state):
        f = jnp.asarray(fitness, jnp.float32)
        eps = (population - state.mean) / state.sigma
        grad = f @ eps / (pop_size * state.sigma)
        mean_f = jnp.mean(f)
        improved = mean_f > state.best_mean_fitness
        all_f = jnp.concatenate([state.elite_fitness, f])
        all_x = jnp.concatenate([state.elites, population])
        top = jnp.argsort(-all_f)[:2]
        elites, elite_f = all_x[top], all_f[top]
        new_mean = jnp.where(improved, state.mean + lr * grad, jnp.mean(elites, axis=0))
        new = PaperState(
            new_mean, state.sigma * sigma_decay, jnp.maximum(mean_f, state.best_mean_fitness),
            elites, elite_f, state.generation + 1,
        )  # fmt: skip
        return new, {
            "es/sigma": new.sigma,
            "es/update_norm": jnp.linalg.norm(new_mean - state.mean),
            "es/accepted": improved.astype(jnp.float32),
        }

    return Strategy("paper", jax.jit(init), jax.jit(ask), jax.jit(tell), lambda s: s.mean)


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "open_es": open_es,
    "snes": snes,
    "cma_es": cma_es,
    "paper": paper_es,
}


def get(name: str, pop_size: int, **kw) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"meta.strategy={name!r} is not one of {sorted(STRATEGIES)}")
    if pop_size < 2 or pop_size % 2:
        raise ValueError(f"meta.pop_size={pop_size} must be even and >= 2 (antithetic pairs)")
    return STRATEGIES[name](pop_size, **kw)
