"""Optimizer from config: optax AdamW + learning-rate schedule with warmup + global-norm clip.

  tx = chain(clip_by_global_norm(clip_norm), adamw(schedule, b1, b2, eps, weight_decay))

Schedules (Hugging Face names, as used by the paper's TRL runs; arXiv 2602.04380 section 3):
* ``cosine``:   0 -> lr linearly over warmup, then lr (1 + cos(pi s)) / 2, s in [0, 1]
* ``linear``:   0 -> lr over warmup, then linearly to 0 at total_steps
* ``constant``: 0 -> lr over warmup, then lr
warmup_steps = round(warmup_ratio * total_steps) unless given explicitly; total_steps is the
run's optimizer steps (run.steps x objective.mu), passed to `make_optimizer`.

Weight decay is applied to leaves with ndim >= 2 only (HF Trainer excludes biases and norm
weights); LoRA adapters are all matrices.

Deliberate deviations: none (optax's AdamW matches torch.optim.AdamW's decoupled decay).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import optax

MAX_LR = 1.0  # past this an Adam learning rate is a typo, not a choice


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW + schedule settings; also the run config's ``optim`` section. The schedule's
    length comes from the run (`make_optimizer(cfg, total_steps)`), not from here."""

    lr: float = 3e-5
    schedule: str = "cosine"  # a key of SCHEDULES: cosine | linear | constant
    warmup_ratio: float = 0.1  # warm-up steps = round(warmup_ratio * total_steps)
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 1.0  # global-norm gradient clip; 0 = off

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: use one of {sorted(SCHEDULES)}")
        if not 0 < self.lr <= MAX_LR:
            raise ValueError(f"lr={self.lr} must be in (0, {MAX_LR:g}] (Adam diverges above)")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.clip_norm < 0:
            raise ValueError(f"clip_norm={self.clip_norm} must be >= 0 (0 = no clipping)")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1) or self.eps <= 0:
            raise ValueError(f"b1={self.b1}, b2={self.b2}, eps={self.eps}: need b1, b2 in [0, 1) "
                             "and eps > 0")  # fmt: skip
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0")


class Optimizer(NamedTuple):
    """The gradient transformation and its schedule (for logging ``train/lr``)."""

    tx: optax.GradientTransformation
    schedule: Callable[[jax.Array], jax.Array]


def _cosine(lr: float, total: int, warmup: int):
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, end_value=0.0)


def _linear(lr: float, total: int, warmup: int):
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, lr, max(warmup, 1)),
            optax.linear_schedule(lr, 0.0, total - warmup),
        ],
        [warmup],
    )


def _constant(lr: float, total: int, warmup: int):
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)],
        [warmup],
    )


# name -> (peak lr, total steps, warm-up steps) -> optax schedule
SCHEDULES: dict[str, Callable[[float, int, int], Callable]] = {
    "cosine": _cosine,
    "linear": _linear,
    "constant": _constant,
}


def decay_mask(params):
    """True for leaves that get weight decay (ndim >= 2)."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(cfg: OptimConfig, total_steps: int = 1000,
                   warmup_steps: int | None = None) -> Optimizer:  # fmt: skip
    """The optimizer of ``total_steps`` optimizer steps (the schedule's length);
    ``warmup_steps`` overrides ``round(cfg.warmup_ratio * total_steps)``."""
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    warmup = int(round(cfg.warmup_ratio * total_steps)) if warmup_steps is None else warmup_steps
    if not 0 <= warmup < total_steps:
        raise ValueError(f"warmup_steps={warmup} must be in [0, total_steps={total_steps})")
    schedule = SCHEDULES[cfg.schedule](cfg.lr, total_steps, warmup)
    parts = []
    if cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(
        optax.adamw(
            schedule,
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask,
        )
    )
    return Optimizer(optax.chain(*parts), schedule)
