"""Group-relative advantages (GRPO, Dr. GRPO, RLOO) with TRL's reward scaling.

Rewards ``r [N]`` hold N = prompts x G completions, the G completions of a prompt in
consecutive rows (TRL's ``repeat_interleave`` layout). With group mean m_g and group std s_g:

* ``grpo``     (Shao et al. 2024, DeepSeekMath):  A_i = (r_i - m_g) / (s + eps)
* ``dr_grpo``  (Liu et al. 2025, arXiv 2503.20783; GBMPO's baseline): A_i = r_i - m_g
* ``rloo``     (Ahmadian et al. 2024): A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - m_g)

``scale_rewards`` (TRL names): ``"group"`` divides by the group std s_g, ``"batch"`` by the
std of all N rewards, ``"none"`` not at all; ``"auto"`` (or None) = the estimator's own
default, `resolve_scale`: grpo -> group (TRL's GRPO), dr_grpo / rloo -> none.
Std is the unbiased (ddof = 1) estimate, as torch's ``Tensor.std`` used by TRL, and
eps = 1e-4 (TRL). A group is "zero-std" when all its rewards are equal (it then carries no
learning signal); ``adv/zero_std_frac`` counts them.

Deliberate deviations: none from TRL 0.23's formulas (GBMPO uses dr_grpo, arXiv 2602.04380 sec. 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

SCALES = ("group", "batch", "none")


def _groups(rewards: jax.Array, group_size: int) -> jax.Array:
    n = rewards.shape[0]
    if group_size < 2 or n % group_size:
        raise ValueError(
            f"group_size={group_size} must be >= 2 and divide the number of rewards ({n})"
        )
    return rewards.astype(jnp.float32).reshape(n // group_size, group_size)


def _group_mean_baseline(g: jax.Array) -> jax.Array:
    return g - g.mean(axis=1, keepdims=True)


def _leave_one_out_baseline(g: jax.Array) -> jax.Array:
    k = g.shape[1]
    return (g - g.mean(axis=1, keepdims=True)) * (k / (k - 1))


class Estimator(NamedTuple):
    """A baseline ``center(groups [n,G]) -> [n,G]`` and the default ``scale_rewards``."""

    center: Callable[[jax.Array], jax.Array]
    default_scale: str


def resolve_scale(estimator: str, scale_rewards: str | None = "auto") -> str:
    """The reward scaling actually used: ``scale_rewards`` unless it is "auto" / None, then
    the estimator's default (grpo -> "group", dr_grpo / rloo -> "none")."""
    if estimator not in REGISTRY:
        raise ValueError(f"unknown advantage {estimator!r}; registered: {sorted(REGISTRY)}")
    scale = REGISTRY[estimator].default_scale if scale_rewards in (None, "auto") else scale_rewards
    if scale not in SCALES:
        raise ValueError(f"scale_rewards={scale!r}: use one of {('auto', *SCALES)}")
    return scale


def make_advantage(
    estimator: str, scale_rewards: str | None = None, eps: float = 1e-4
) -> Callable[[jax.Array, int], tuple[jax.Array, dict]]:
    """Returns ``fn(rewards [N], group_size) -> (advantages [N] float32, metrics)``, jittable
    with ``group_size`` static."""
    scale = resolve_scale(estimator, scale_rewards)
    est = REGISTRY[estimator]

    def fn(rewards: jax.Array, group_size: int):
        g = _groups(rewards, group_size)
        std_g = jnp.std(g, axis=1, ddof=1, keepdims=True)
        adv = est.center(g)
        if scale == "group":
            adv = adv / (std_g + eps)
        elif scale == "batch":
            adv = adv / (jnp.std(g, ddof=1) + eps)
        metrics = {
            "adv/mean": jnp.mean(adv),
            "adv/std": jnp.std(adv),
            "adv/zero_std_frac": jnp.mean(jnp.isclose(std_g, 0.0).astype(jnp.float32)),
            "adv/reward_mean": jnp.mean(g),
        }
        return adv.reshape(-1), metrics

    return fn


REGISTRY: dict[str, Estimator] = {
    "grpo": Estimator(_group_mean_baseline, "group"),
    "dr_grpo": Estimator(_group_mean_baseline, "none"),
    "rloo": Estimator(_leave_one_out_baseline, "none"),
}


def get(name: str, **options) -> Callable[[jax.Array, int], tuple[jax.Array, dict]]:
    """``get("grpo", scale_rewards="batch")``; see `make_advantage`."""
    bad = set(options) - {"scale_rewards", "eps"}
    if bad:
        raise ValueError(f"advantage options {sorted(bad)} unknown; use scale_rewards, eps")
    return make_advantage(name, **options)
