"""LoRA adapters as a separate pytree over a generic params pytree (Hu et al. 2021, 2106.09685).

A target weight W with shape [*batch, *in, *out] (e.g. the model's stacked [L, E, H, D] q
projection: batch = (L,), in = (E,), out = (H, D)) gets adapters
A [*batch, prod(in), r] and B [*batch, r, prod(out)], and the forward weight is

  W' = W + (alpha / r) reshape(A @ B)                                  (merged on the fly)

A ~ U(-1/sqrt(prod(in)), 1/sqrt(prod(in))) (PEFT's kaiming-uniform bound), B = 0, so the
initial policy equals the base. Only the adapter pytree is trained; the base stays in
``TrainState.frozen`` and doubles as the reference policy (adapters off), so there is no
second copy of the weights.

Why merge instead of x @ A @ B: the train step only sees ``apply_fn(params, ids, mask)``
(DESIGN.md), so adapters must be expressed as weights. Inside the jitted step the merge is one
[in, r] x [r, out] matmul per target (cheap next to the forward pass) and a transient copy of
the target weights; the merged weight is float32 (the adapter dtype) so a small update is not
rounded away before the model casts to its compute dtype.

Target selection: a leaf is a target if some key on its path equals a target name or the
name without ``_proj`` (``"q_proj"`` matches the model's ``layers/q``), and the leaf has at
least two non-batch axes. Batch axes: one leading axis under a ``layers`` key (stacked
layers), else none. Input axes: the first non-batch axis, except for output projections
(``o_proj`` / ``o`` / ``down``-style overrides via ``in_axes``) where all but the last.

Deliberate deviations from PEFT: no dropout on the adapter input (RL post-training runs with
dropout off); A's init bound is 1/sqrt(fan_in) (PEFT: kaiming_uniform with a = sqrt(5),
the same bound).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA settings; also the run config's ``lora`` section (rank 0 = full fine-tuning)."""

    rank: int = 0  # 0 = off (full fine-tuning)
    alpha: float = 0.0  # scale alpha / rank; must be > 0 when rank > 0 (the paper: alpha = r)
    targets: tuple[str, ...] = DEFAULT_TARGETS
    # (name, number of input axes) overrides; default 1, and "all but the last" for o / o_proj
    in_axes: tuple[tuple[str, int], ...] = ()

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"rank={self.rank} must be >= 0 (0 = full fine-tuning)")
        if self.rank and self.alpha <= 0:
            raise ValueError(f"alpha={self.alpha} must be > 0 when rank > 0 (the paper: alpha = r)")
        if self.rank and not self.targets:
            raise ValueError("targets is empty: name projections such as 'q_proj'")

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _matches(path, cfg: LoraConfig) -> str | None:
    for key in path:
        for t in cfg.targets:
            if key == t or key == t.removesuffix("_proj"):
                return t
    return None


def _split(path, shape, cfg: LoraConfig):
    """(n_batch, n_in, n_out) axes of a target leaf, or None if it is not a matrix."""
    target = _matches(path, cfg)
    if target is None:
        return None
    n_batch = 1 if "layers" in path[:-1] else 0
    rest = len(shape) - n_batch
    if rest < 2 or "bias" in str(path[-1]) or "norm" in str(path[-1]):
        return None
    overrides = dict(cfg.in_axes)
    short = target.removesuffix("_proj")
    if target in overrides or short in overrides:
        n_in = overrides.get(target, overrides.get(short))
    elif short == "o":
        n_in = rest - 1
    else:
        n_in = 1
    if not 1 <= n_in < rest:
        raise ValueError(f"lora in_axes for {target!r}={n_in} must be in [1, {rest - 1}]")
    return n_batch, n_in, rest - n_in


def targets(base, cfg: LoraConfig) -> dict:
    """{path: (n_batch, n_in, n_out)} of the leaves that get adapters (static)."""
    out = {}
    for path, leaf in flatten_dict(base).items():
        split = _split(path, tuple(leaf.shape), cfg)
        if split is not None:
            out[path] = split
    if not out:
        names = ["/".join(map(str, p)) for p in flatten_dict(base)]
        raise ValueError(f"lora targets {cfg.targets} match no weight among {names[:20]}")
    return out


def init(key: jax.Array, base, cfg: LoraConfig) -> dict:
    """Adapter pytree mirroring the base paths: {... {"lora_a": A, "lora_b": B}} (float32)."""
    if not cfg.enabled:
        raise ValueError("LoRA rank is 0 (full fine-tuning): there are no adapters to make")
    specs = targets(base, cfg)
    keys = jax.random.split(key, len(specs))
    flat = flatten_dict(base)
    adapters: dict = {}
    for k, (path, (nb, ni, _)) in zip(keys, specs.items(), strict=True):
        shape = flat[path].shape
        batch, fan_in = shape[:nb], math.prod(shape[nb : nb + ni])
        fan_out = math.prod(shape[nb + ni :])
        bound = 1.0 / math.sqrt(fan_in)
        a = jax.random.uniform(k, (*batch, fan_in, cfg.rank), jnp.float32, -bound, bound)
        b = jnp.zeros((*batch, cfg.rank, fan_out), jnp.float32)
        adapters[path + ("lora_a",)], adapters[path + ("lora_b",)] = a, b
    return unflatten_dict(adapters)


def merge(base, adapters, cfg: LoraConfig):
    """W + (alpha/r) A @ B for every adapted leaf (float32 result); other leaves as they are.

    Pure and jittable; also the export path (`merge` then save the merged params)."""
    specs = targets(base, cfg)
    flat_ad = flatten_dict(adapters)
    merged = {}
    for path, leaf in flatten_dict(base).items():
        if path in specs:
            a, b = flat_ad[path + ("lora_a",)], flat_ad[path + ("lora_b",)]
            delta = (cfg.scale * jnp.matmul(a, b)).reshape(leaf.shape)
            dt = jnp.promote_types(leaf.dtype, delta.dtype)
            leaf = leaf.astype(dt) + delta.astype(dt)
        merged[path] = leaf
    return unflatten_dict(merged)


def logical_axes(base_names, base_shapes, cfg: LoraConfig) -> dict:
    """Logical axis names of the adapter pytree, from the base's names (same structure as
    ``base_shapes``, leaves tuples of str | None): A [*batch, in, r] takes the base's batch and
    (single) input name; B [*batch, r, out] takes the outermost output name (a flattened
    (heads, head_dim) split on heads is the same contiguous blocks). Rank axes: None."""
    names = flatten_dict(base_names)
    out = {}
    for path, (nb, ni, _) in targets(base_shapes, cfg).items():
        n = names[path]
        out[path + ("lora_a",)] = (*n[:nb], n[nb] if ni == 1 else None, None)
        out[path + ("lora_b",)] = (*n[:nb], None, n[nb + ni])
    return unflatten_dict(out)


def num_params(adapters) -> int:
    return sum(x.size for x in jax.tree.leaves(adapters))
