"""Optimizer from config: optax AdamW + learning-rate schedule with warmup + global-norm clip.

  tx = chain(clip_by_global_norm(max_grad_norm), adamw(schedule, b1, b2, eps, weight_decay))

Schedules (Hugging Face names, as used by the paper's TRL runs; PAPER.md section 3):
* ``cosine``:   0 -> lr linearly over warmup, then lr (1 + cos(pi s)) / 2, s in [0, 1]
* ``linear``:   0 -> lr over warmup, then linearly to 0 at total_steps
* ``constant``: 0 -> lr over warmup, then lr
warmup_steps = round(warmup_ratio * total_steps) unless given explicitly.

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


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 3e-5
    schedule: str = "cosine"  # cosine | linear | constant
    total_steps: int = 1000
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: use one of {sorted(SCHEDULES)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0")
        if self.total_steps < 1:
            raise ValueError(f"total_steps={self.total_steps} must be >= 1")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} must be in [0, total_steps={self.total_steps})"
            )
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm={self.max_grad_norm} must be > 0 or None (no clip)")

    @property
    def num_warmup(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(round(self.warmup_ratio * self.total_steps))


class Optimizer(NamedTuple):
    """The gradient transformation and its schedule (for logging ``train/lr``)."""

    tx: optax.GradientTransformation
    schedule: Callable[[jax.Array], jax.Array]


def _cosine(c: OptimConfig):
    return optax.warmup_cosine_decay_schedule(
        0.0, c.learning_rate, c.num_warmup, c.total_steps, end_value=0.0
    )


def _linear(c: OptimConfig):
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, c.learning_rate, max(c.num_warmup, 1)),
            optax.linear_schedule(c.learning_rate, 0.0, c.total_steps - c.num_warmup),
        ],
        [c.num_warmup],
    )


def _constant(c: OptimConfig):
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, c.learning_rate, max(c.num_warmup, 1)),
            optax.constant_schedule(c.learning_rate),
        ],
        [c.num_warmup],
    )


SCHEDULES: dict[str, Callable[[OptimConfig], Callable]] = {
    "cosine": _cosine,
    "linear": _linear,
    "constant": _constant,
}


def decay_mask(params):
    """True for leaves that get weight decay (ndim >= 2)."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(cfg: OptimConfig) -> Optimizer:
    schedule = SCHEDULES[cfg.schedule](cfg)
    parts = []
    if cfg.max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
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
