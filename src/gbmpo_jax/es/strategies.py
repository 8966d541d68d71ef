"""ES strategies over the mirror-map search space (GBMPO, arXiv 2602.04380, section 4).

Every strategy is a `Strategy(name, init, ask, tell, mean, reused, space)` of pure functions
over explicit state, **maximising** fitness:

* ``init(key, mean [D]) -> state``
* ``ask(key, state) -> (population [P,D], state)``
* ``tell(key, population [P,D], fitness [P], state) -> (state, metrics)``; metrics hold
  ``es/sigma`` (of the next ask) and ``es/update_norm`` (||mean_new - mean_old||).
* ``mean(state) -> [D]``: the distribution's centre, the map an ES run hands on.
* ``reused(state) -> (mask [P], fitness [P])``: rows of the last ask whose fitness the
  strategy already holds (only the paper ES's elites); ``tell`` uses those values.
* ``space``: the search space of `mirror_adapter` the strategy works in.

Registry (`STRATEGIES`): ``open_es`` (default; evosax OpenES, antithetic sampling, centered
ranks, Adam), ``snes``, ``cma_es`` (evosax) and ``paper`` (`paper_es`, the reference code's
algorithm, written here). evosax minimises: `_evosax` negates the fitness, the only place
where the sign flips.

Search spaces (`mirror_adapter`), both R^380 = [v(126), w(126), b(126), a, c]:
* ``softplus`` (the evosax strategies): an unconstrained z mapped to coefficients
  theta = softplus(z) > 0, so every candidate is a convex potential with D >= 0 under any
  perturbation. The inverse z0 = softplus^-1(max(theta0, 1e-6)) maps back to the reference
  init (coefficients below 1e-6 become 1e-6). For theta << 1 softplus(z) ~ e^z, so a Gaussian
  step in z is a relative (multiplicative) change of each coefficient.
* ``coef`` (the paper ES): the raw coefficients theta themselves, as the reference searched;
  sigma is added to theta (sigma = 0.01 moves a 0.005 coefficient by ~200%).

The paper ES (`paper_es`) follows the reference code (aligntune ``meta_es``: antithetic
pairs, sigma_t = sigma * 0.99^t, phi += 0.01 * raw-fitness gradient over the (eps, f) pairs
with f > 0, accepted only if the population's mean fitness beats the best accepted one;
otherwise phi is kept and the fittest K = max(2, 2 floor(P / 8)) (eps, f) pairs are reused in
the next generation, which samples only P - K new candidates). Deliberate deviations:
1. Candidates and phi are projected onto theta >= 0 (max(., 0)), so every candidate is a
   convex potential with D >= 0; the reference let coefficients go negative. The gradient
   still uses the sampled eps (an unbiased gradient of the Gaussian-smoothed f(max(., 0))),
   not the clipped displacement.
2. The population keeps a static size P: after a rejection its first K rows are the elites
   (`reused` says which); `tell` uses their stored fitness, as the reference. The outer loop
   skips those inner runs in sequential mode and runs them anyway under vmap / mesh (one
   program shape), discarding the result.
The evosax strategies deviate more: they search in z (above) with their own update rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gbmpo_jax.rl import divergences

KEYS = ("v", "w", "b", "a", "c")
DIM = 3 * divergences.N_UNITS + 2  # 380
MIN_COEF = 1e-6


# ------------------------------------------------------------------------ search-space adapter
class MirrorAdapter(NamedTuple):
    """z [..., dim] <-> neural-mirror params {"v","w","b": [..., 126], "a","c": [...]}."""

    to_params: Callable[[jax.Array], dict]
    from_params: Callable[[dict], jax.Array]
    dim: int = DIM  # the search space's dimension (381 with a shared log-scale)


def _softplus_inv(x):
    x = np.maximum(np.asarray(x, np.float64), MIN_COEF)
    return (x + np.log(-np.expm1(-x))).astype(np.float32)  # log(e^x - 1), stable


def _split(theta) -> dict:
    n = divergences.N_UNITS
    return {
        "v": theta[..., :n],
        "w": theta[..., n : 2 * n],
        "b": theta[..., 2 * n : 3 * n],
        "a": theta[..., 3 * n],
        "c": theta[..., 3 * n + 1],
    }


SPACES = ("softplus", "softplus_scale", "coef")


def mirror_adapter(space: str = "softplus") -> MirrorAdapter:
    """``softplus``: z [380] -> theta = softplus(z) (open_es, snes, cma_es); ``coef``: the raw
    coefficients themselves, theta = z (the paper ES, which keeps them >= 0 by projection);
    ``softplus_scale``: z [381] -> theta = exp(z[380]) softplus(z[:380]), one shared
    log-scale coordinate on top of the per-coefficient search (a deviation from the paper:
    isotropic noise on 380 coefficients barely changes the map's overall strength, which is
    the direction that moves fitness most at CPU scale; see experiments/arith_es_meta.py)."""
    if space not in SPACES:
        raise ValueError(f"search space {space!r} is not one of {SPACES}")
    scaled = space == "softplus_scale"

    def to_params(z):
        z = jnp.asarray(z, jnp.float32)
        if scaled:
            return _split(jnp.exp(z[..., DIM:]) * jax.nn.softplus(z[..., :DIM]))
        return _split(jax.nn.softplus(z) if space == "softplus" else z)

    def from_params(params):
        flat = np.concatenate([np.reshape(np.asarray(params[k]), (-1,)) for k in KEYS])
        if flat.shape != (DIM,):
            raise ValueError(f"mirror params flatten to {flat.shape}, need ({DIM},)")
        z = _softplus_inv(flat) if space != "coef" else flat
        if scaled:  # log-scale 0: the map itself
            z = np.concatenate([z, np.zeros(1, np.float32)])
        return jnp.asarray(z, jnp.float32)

    return MirrorAdapter(jax.jit(to_params), from_params, DIM + 1 if scaled else DIM)


# ------------------------------------------------------------------------ strategy interface
class Strategy(NamedTuple):
    name: str
    init: Callable[[jax.Array, jax.Array], Any]
    ask: Callable[[jax.Array, Any], tuple[jax.Array, Any]]
    tell: Callable[[jax.Array, jax.Array, jax.Array, Any], tuple[Any, dict]]
    mean: Callable[[Any], jax.Array]
    # (state after ask) -> (mask [P] bool, fitness [P]): rows whose fitness the strategy
    # already holds (the paper ES's elites); the outer loop reports those values
    reused: Callable[[Any], tuple[jax.Array, jax.Array]]
    space: str  # the search space of `mirror_adapter`: "softplus" or "coef"


def _evosax(name: str, algo, params, pop_size: int) -> Strategy:
    """Wraps an evosax 0.3 algorithm (which minimises) as a maximising Strategy over z."""

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

    def reused(state):
        return jnp.zeros((pop_size,), bool), jnp.zeros((pop_size,), jnp.float32)

    return Strategy(name, jax.jit(init), jax.jit(ask), jax.jit(tell), lambda s: s.mean,
                    jax.jit(reused), "softplus")  # fmt: skip


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
    return _evosax("open_es", algo, algo.default_params, pop_size)


def snes(
    pop_size: int, sigma: float = 0.1, lr: float = 1.0, sigma_decay: float = 1.0, dim: int = DIM
):
    """Separable NES via evosax (sgd(lr) on the natural gradient of the mean)."""
    from evosax.algorithms import SNES

    algo = SNES(pop_size, jnp.zeros(dim), optimizer=optax.sgd(lr))
    return _evosax("snes", algo, algo.default_params.replace(std_init=jnp.asarray(sigma)), pop_size)


def cma_es(
    pop_size: int, sigma: float = 0.1, lr: float = 1.0, sigma_decay: float = 1.0, dim: int = DIM
):
    """CMA-ES via evosax (full 380x380 covariance; lr is unused)."""
    from evosax.algorithms import CMA_ES

    algo = CMA_ES(pop_size, jnp.zeros(dim))
    return _evosax(
        "cma_es", algo, algo.default_params.replace(std_init=jnp.asarray(sigma)), pop_size
    )


class PaperState(NamedTuple):
    mean: jax.Array  # [D] phi, the reference's current map (>= 0)
    sigma: jax.Array  # () sigma of the next ask
    best_fitness: jax.Array  # () best accepted population-mean fitness (-inf at start)
    eps: jax.Array  # [P,D] the epsilon of every row of the last ask (elite rows included)
    elite_x: jax.Array  # [K,D] candidates kept after a rejection, in ascending fitness
    elite_eps: jax.Array  # [K,D] their epsilon
    elite_fitness: jax.Array  # [K] their fitness, reused instead of re-measured
    has_elites: jax.Array  # () bool: the last generation was rejected
    generation: jax.Array  # () int32


def paper_elites(pop_size: int) -> int:
    """K, the candidates kept on rejection: the reference's top 25% rounded down to an even
    count, at least 2 (so the P - K new ones are whole antithetic pairs)."""
    return max(2, (pop_size // 4 // 2) * 2)


def paper_es(
    pop_size: int,
    sigma: float = 0.01,
    lr: float = 0.01,
    sigma_decay: float = 0.99,
    dim: int = DIM,
    noise: Callable[[jax.Array, tuple], jax.Array] = jax.random.normal,
) -> Strategy:
    """The reference code's ES over the raw coefficients phi (search space ``coef``).

    Generation t, sigma_t = sigma * sigma_decay^t, K = `paper_elites`(P):
      ask:  new eps_j ~ N(0, I) in antithetic pairs, interleaved [e1, -e1, e2, -e2, ...];
            x_j = max(phi + sigma_t eps_j, 0); after a rejection the first K rows are the
            kept elites (their x, eps and fitness) and only P - K rows are new.
      tell: f [P] (the elites' stored fitness replaces rows 0..K-1; non-finite counts as 0);
            accept iff mean(f) > best_fitness (always at t = 0, best starts at -inf);
            accept: g = sum_{j: f_j > 0} f_j eps_j / (n_success sigma_t) (the successful
            (eps, f) pairs; g = 0 if none), phi = max(phi + lr g, 0), best = mean(f), no elites;
            reject: phi and best unchanged, elites = the K fittest (eps, f, x) of this
            generation (elites included), ascending.
    ``noise(key, shape)`` draws the [P/2, D] base perturbations (a test injects fixed ones).
    """
    k = paper_elites(pop_size)
    if pop_size % 2 or pop_size < k + 2:
        raise ValueError(
            f"meta.pop_size={pop_size}: the paper ES needs an even size >= {k + 2} "
            f"(it keeps {k} elites on rejection and samples antithetic pairs besides)"
        )
    rows = jnp.arange(pop_size)

    def init(key, mean):
        mean = jnp.asarray(mean, jnp.float32)
        if mean.shape != (dim,):
            raise ValueError(f"paper ES mean has shape {mean.shape}, expected ({dim},)")
        z = jnp.zeros((k, dim), jnp.float32)
        return PaperState(
            jnp.maximum(mean, 0.0), jnp.asarray(sigma, jnp.float32),
            jnp.asarray(-jnp.inf, jnp.float32), jnp.zeros((pop_size, dim), jnp.float32),
            z, z, jnp.zeros((k,), jnp.float32), jnp.asarray(False), jnp.asarray(0, jnp.int32),
        )  # fmt: skip

    def ask(key, state):
        half = noise(key, (pop_size // 2, dim)).astype(jnp.float32)
        new = jnp.stack([half, -half], axis=1).reshape(pop_size, dim)  # e1, -e1, e2, -e2, ...
        x = jnp.maximum(state.mean + state.sigma * new, 0.0)
        # after a rejection: [elites, the first (P - K) / 2 new pairs]
        eps = jnp.where(
            state.has_elites, jnp.concatenate([state.elite_eps, new[: pop_size - k]]), new
        )
        x = jnp.where(state.has_elites, jnp.concatenate([state.elite_x, x[: pop_size - k]]), x)
        return x, state._replace(eps=eps)

    def reused(state):
        """(mask [P], fitness [P]): the rows whose fitness the ES takes from its elites."""
        mask = state.has_elites & (rows < k)
        return mask, jnp.zeros((pop_size,), jnp.float32).at[:k].set(state.elite_fitness)

    def tell(key, population, fitness, state):
        mask, known = reused(state)
        f = jnp.where(mask, known, jnp.asarray(fitness, jnp.float32))
        f = jnp.where(jnp.isfinite(f), f, 0.0)  # the reference scores a failed run 0
        mean_f = jnp.mean(f)
        accepted = mean_f > state.best_fitness
        ok = f > 0
        n_ok = jnp.sum(ok)
        grad = jnp.where(ok, f, 0.0) @ state.eps / (jnp.maximum(n_ok, 1) * state.sigma)
        new_mean = jnp.where(accepted, jnp.maximum(state.mean + lr * grad, 0.0), state.mean)
        top = jnp.argsort(f)[-k:]  # ascending, as the reference's argsort(...)[-K:]
        new = PaperState(
            new_mean, state.sigma * sigma_decay,
            jnp.where(accepted, mean_f, state.best_fitness), state.eps,
            population[top].astype(jnp.float32), state.eps[top], f[top], ~accepted,
            state.generation + 1,
        )  # fmt: skip
        return new, {
            "es/sigma": new.sigma,
            "es/update_norm": jnp.linalg.norm(new_mean - state.mean),
            "es/accepted": accepted.astype(jnp.float32),
            "es/grad_norm": jnp.where(accepted, jnp.linalg.norm(grad), 0.0),
            "es/successful": n_ok.astype(jnp.float32),
            "es/reused": jnp.sum(mask).astype(jnp.float32),
        }

    return Strategy(
        "paper", jax.jit(init), jax.jit(ask), jax.jit(tell), lambda s: s.mean,
        jax.jit(reused), "coef",
    )  # fmt: skip


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "open_es": open_es,
    "snes": snes,
    "cma_es": cma_es,
    "paper": paper_es,
}


def check(name: str, pop_size: int) -> None:
    """The one check of a strategy name and population size (ValueError naming the key)."""
    if name not in STRATEGIES:
        raise ValueError(f"meta.strategy={name!r} is not one of {sorted(STRATEGIES)}")
    if pop_size < 2 or pop_size % 2:
        raise ValueError(f"meta.pop_size={pop_size} must be even and >= 2 (antithetic pairs)")


def get(name: str, pop_size: int, **kw) -> Strategy:
    check(name, pop_size)
    return STRATEGIES[name](pop_size, **kw)
