"""Clipped policy-gradient surrogate plus lambda * divergence (GBMPO, arXiv 2602.04380, sec. 1).

Per completion token (i, t), with rho = exp(logp - old_logp) and advantage A_i:

  l_{i,t} = -min(rho A_i, clip(rho, 1 - eps_low, 1 + eps_high) A_i) + lambda D(logp, ref_logp)

(TRL 0.23 ``GRPOTrainer``; D any `divergences.Divergence`). ``use_bias_correction_kl``
(TRL >= 1.x's option of that name) replaces lambda D by lambda rho D, rho the unclipped
importance ratio with its gradient (TRL: ``per_token_kl * coef_1``), which makes the k3
estimate unbiased for samples from the old policy; we apply it to any divergence.
``importance_sampling="sequence"``
replaces rho by the GSPO sequence ratio exp(mean_t mask (logp - old_logp)), shared by all
tokens of the row (gradient flows through the mean). The batch loss is sum_{i,t} W_{i,t} l_{i,t}
with aggregation weights W from the *whole* update batch (so micro-batching is exact):

* ``grpo``:    W = m_{i,t} / (N max(sum_t m_{i,t}, 1))      (sequence mean, then batch mean)
* ``dr_grpo``: W = m_{i,t} / (N L_max)                      (L_max = max_completion_length)
* ``bnpo``:    W = m_{i,t} / max(sum_{i,t} m_{i,t}, 1)      (tokens of this update batch)
* ``dapo``:    W = m_{i,t} / num_items_in_batch             (tokens of the whole accumulated
               batch, passed in by the caller: e.g. all processes / all optimizer steps of a
               generation batch)

N = rows of the update batch, m = completion mask (x ~truncated with
``mask_truncated_completions``).

Deliberate deviations from TRL / the reference code:
1. ``bnpo`` normalises by the token count of the whole update batch, not of each
   micro-batch (TRL averages per-micro-batch means, so its value depends on the split).
2. ``lambda`` (the divergence coefficient) is a traced argument, not a config constant, so ES
   can vmap over it.
3. Probabilities / divergences are always computed in float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from gbmpo_jax.rl import advantages, divergences
from gbmpo_jax.rl.divergences import Divergence


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """The RL objective's static settings (hashable); also the run config's ``objective``
    section, checked here against the registries (advantages, divergences, AGGREGATIONS).
    See the module docstring for the formulas."""

    advantage: str = "dr_grpo"  # a key of advantages.REGISTRY: grpo | dr_grpo | rloo
    # auto = the estimator's own (grpo: group, dr_grpo / rloo: none) | group | batch | none
    scale_rewards: str = "auto"
    divergence: str = "kl"  # a key of divergences.REGISTRY
    coef: float = 0.04  # lambda, the divergence weight (the state carries it, traced)
    loss_type: str = "dr_grpo"  # a key of AGGREGATIONS (TRL names)
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    importance_sampling: str = "token"  # a key of IMPORTANCE_SAMPLING: token | sequence
    mu: int = 1  # optimizer steps per generation batch
    mask_truncated_completions: bool = True
    micro_batches: int = 1  # gradient accumulation inside one jitted update
    # tokens per fused lm_head + log-softmax chunk of the log-prob passes: -1 = auto (one
    # chunk's fp32 logits <= 256 MiB, `logprobs.chunk_tokens_for`), 0 = full logits
    logprob_chunk: int = -1
    mirror_params_path: str = ""  # .npz of neural-mirror coefficients (e.g. learned by ES)
    mirror_init: str = "reference"  # a key of divergences.MIRROR_INITS
    # TRL >= 1.x `use_bias_correction_kl`: the per-token divergence times the importance
    # ratio; off = TRL 0.23, the paper's reference
    use_bias_correction_kl: bool = False
    # dr_grpo's L_max; 0 = the completion length of the batch, i.e. rollout.max_new_tokens
    # (the sampler's buffers are always that wide)
    max_completion_length: int = 0

    def __post_init__(self):
        def one_of(name, options):
            value = getattr(self, name)
            if value not in options:
                raise ValueError(f"{name}={value!r}: use one of {sorted(options)}")

        one_of("advantage", advantages.REGISTRY)
        one_of("scale_rewards", ("auto", *advantages.SCALES))
        one_of("divergence", divergences.REGISTRY)
        one_of("loss_type", AGGREGATIONS)
        one_of("importance_sampling", IMPORTANCE_SAMPLING)
        one_of("mirror_init", divergences.MIRROR_INITS)
        if not 0 <= self.coef <= MAX_COEF:
            raise ValueError(f"coef={self.coef} must be in [0, {MAX_COEF:g}] (a divergence "
                             "weight past that swamps any reward)")  # fmt: skip
        if not (0 <= self.epsilon_low < 1) or self.epsilon_high < 0:
            raise ValueError(
                f"epsilon_low={self.epsilon_low}, epsilon_high={self.epsilon_high}: need "
                "0 <= epsilon_low < 1 and epsilon_high >= 0 (typical 0.2 / 0.2 or 0.28)"
            )
        for name, low in (("mu", 1), ("micro_batches", 1), ("logprob_chunk", -1),
                          ("max_completion_length", 0)):  # fmt: skip
            if getattr(self, name) < low:
                hint = " (-1 = auto, 0 = full logits, N = tokens per chunk)" if low < 0 else ""
                raise ValueError(f"{name}={getattr(self, name)} must be >= {low}{hint}")
        if self.mirror_params_path and self.divergence != "neural_mirror":
            raise ValueError(f"mirror_params_path={self.mirror_params_path!r} needs "
                             "divergence=neural_mirror")  # fmt: skip


MAX_COEF = 1e3
IMPORTANCE_SAMPLING = ("token", "sequence")  # per-token ratio | GSPO sequence ratio


# ------------------------------------------------------------------------ aggregations
def _w_grpo(mask, cfg, num_items):
    n = mask.shape[0]
    return mask / (n * jnp.maximum(mask.sum(axis=1, keepdims=True), 1.0))


def _w_dr_grpo(mask, cfg, num_items):
    return mask / (mask.shape[0] * (cfg.max_completion_length or mask.shape[1]))


def _w_bnpo(mask, cfg, num_items):
    return mask / jnp.maximum(mask.sum(), 1.0)


def _w_dapo(mask, cfg, num_items):
    if num_items is None:
        raise ValueError(
            "loss_type='dapo' needs batch['num_items_in_batch']: the number of completion "
            "tokens of the whole accumulated batch (sum of completion_mask over it)"
        )
    return mask / jnp.maximum(jnp.asarray(num_items, jnp.float32), 1.0)


# name -> weights(mask [N,T] float32, cfg, num_items | None) -> W [N,T]
AGGREGATIONS: dict[str, Callable] = {
    "grpo": _w_grpo,
    "dr_grpo": _w_dr_grpo,
    "bnpo": _w_bnpo,
    "dapo": _w_dapo,
}


def loss_mask(completion_mask: jax.Array, truncated: jax.Array | None, cfg: ObjectiveConfig):
    """m [N,T] float32: the completion mask, with truncated rows zeroed if configured."""
    m = completion_mask.astype(jnp.float32)
    if cfg.mask_truncated_completions and truncated is not None:
        m = m * (1.0 - truncated.astype(jnp.float32))[:, None]
    return m


def token_weights(mask: jax.Array, cfg: ObjectiveConfig, num_items=None) -> jax.Array:
    """Aggregation weights W [N,T] for the whole update batch (see module docstring)."""
    if cfg.max_completion_length and mask.shape[1] > cfg.max_completion_length:
        raise ValueError(
            f"completion length {mask.shape[1]} exceeds max_completion_length="
            f"{cfg.max_completion_length}; raise it in the loss config"
        )
    return AGGREGATIONS[cfg.loss_type](mask, cfg, num_items)


# ------------------------------------------------------------------------ per-token terms
def per_token_terms(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    divergence: Divergence,
    div_params,
    div_coef: jax.Array,
    cfg: ObjectiveConfig,
) -> dict[str, jax.Array]:
    """Per-token loss pieces, all [n,T] float32.

    Args: logp / old_logp / ref_logp [n,T] (old and ref are treated as constants),
    advantages [n], mask [n,T]. Returns loss, policy (surrogate part), div, ratio,
    low_clip / high_clip indicators.
    """
    logp = logp.astype(jnp.float32)
    old_logp = jax.lax.stop_gradient(old_logp.astype(jnp.float32))
    ref_logp = jax.lax.stop_gradient(ref_logp.astype(jnp.float32))
    adv = advantages.astype(jnp.float32)[:, None]
    log_ratio = logp - old_logp
    if cfg.importance_sampling == "sequence":
        seq = (log_ratio * mask).sum(axis=1, keepdims=True) / jnp.maximum(
            mask.sum(axis=1, keepdims=True), 1.0
        )
        log_ratio = jnp.broadcast_to(seq, logp.shape)
    ratio = jnp.exp(log_ratio)
    clipped = jnp.clip(ratio, 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high)
    policy = -jnp.minimum(ratio * adv, clipped * adv)
    div = divergence.per_token(logp, ref_logp, div_params)
    reg = div * ratio if cfg.use_bias_correction_kl else div
    return {
        "loss": policy + div_coef * reg,
        "policy": policy,
        "div": div,
        "ratio": ratio,
        "low_clip": ((ratio < 1.0 - cfg.epsilon_low) & (adv < 0)).astype(jnp.float32),
        "high_clip": ((ratio > 1.0 + cfg.epsilon_high) & (adv > 0)).astype(jnp.float32),
    }


def weighted_loss(terms: dict[str, jax.Array], weights: jax.Array, mask: jax.Array):
    """(loss, sums): loss = sum W l for this (micro-)batch and additive metric sums."""
    big = jnp.float32(3e38)
    on = mask > 0
    sums = {
        "loss": jnp.sum(weights * terms["loss"]),
        "policy_loss": jnp.sum(weights * terms["policy"]),
        "div_sum": jnp.sum(mask * terms["div"]),
        "ratio_sum": jnp.sum(mask * terms["ratio"]),
        "low_clip": jnp.sum(mask * terms["low_clip"]),
        "high_clip": jnp.sum(mask * terms["high_clip"]),
        "tokens": jnp.sum(mask),
        "ratio_min": jnp.min(jnp.where(on, terms["ratio"], big)),
        "ratio_max": jnp.max(jnp.where(on, terms["ratio"], -big)),
    }
    return sums["loss"], jax.tree.map(jax.lax.stop_gradient, sums)


def loss_fn(
    logp, old_logp, ref_logp, advantages, mask, weights, divergence, div_params, div_coef, cfg
):
    """Scalar objective sum_{i,t} W_{i,t} l_{i,t} (to minimise) and its metric sums."""
    terms = per_token_terms(
        logp, old_logp, ref_logp, advantages, mask, divergence, div_params, div_coef, cfg
    )
    return weighted_loss(terms, weights, mask)
