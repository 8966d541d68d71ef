"""Parameters of the decoder-only transformer: leaf shapes, logical axis names, random init.

The pytree (leading axis L on every layer leaf; `transformer` runs the layers over it):

    embed [V,E]            lm_head [E,V] (untied only)     final_norm [E]
    layers: attn_norm [L,E]  q [L,E,H,D]  k,v [L,E,Hkv,D]  o [L,H,D,E]
            q_bias [L,H,D], k_bias/v_bias [L,Hkv,D] (Qwen2)   q_norm/k_norm [L,D] (Qwen3)
            mlp_norm [L,E]  gate,up [L,E,F]  down [L,F,E]
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from gbmpo_jax.models.config import DTYPES, ModelConfig


def param_shapes(config: ModelConfig) -> dict:
    """Shapes of every parameter leaf (same structure as the params pytree)."""
    c = config
    L, E, H, K, D, F, V = (
        c.num_layers,
        c.hidden_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.intermediate_size,
        c.vocab_size,
    )
    layers = {
        "attn_norm": (L, E),
        "q": (L, E, H, D),
        "k": (L, E, K, D),
        "v": (L, E, K, D),
        "o": (L, H, D, E),
        "mlp_norm": (L, E),
        "gate": (L, E, F),
        "up": (L, E, F),
        "down": (L, F, E),
    }
    if c.attention_bias:
        layers.update(q_bias=(L, H, D), k_bias=(L, K, D), v_bias=(L, K, D))
    if c.qk_norm:
        layers.update(q_norm=(L, D), k_norm=(L, D))
    shapes = {"embed": (V, E), "layers": layers, "final_norm": (E,)}
    if not c.tie_word_embeddings:
        shapes["lm_head"] = (E, V)
    return shapes


def logical_axes(config: ModelConfig) -> dict:
    """Logical axis names for every parameter leaf (tuples of str | None), for mesh rules."""
    names = {
        "attn_norm": ("layers", "norm"),
        "q": ("layers", "embed", "heads", "head_dim"),
        "k": ("layers", "embed", "kv_heads", "head_dim"),
        "v": ("layers", "embed", "kv_heads", "head_dim"),
        "o": ("layers", "heads", "head_dim", "embed"),
        "mlp_norm": ("layers", "norm"),
        "gate": ("layers", "embed", "mlp"),
        "up": ("layers", "embed", "mlp"),
        "down": ("layers", "mlp", "embed"),
        "q_bias": ("layers", "heads", "head_dim"),
        "k_bias": ("layers", "kv_heads", "head_dim"),
        "v_bias": ("layers", "kv_heads", "head_dim"),
        "q_norm": ("layers", "head_dim"),
        "k_norm": ("layers", "head_dim"),
    }
    shapes = param_shapes(config)
    out = {k: v for k, v in (("embed", ("vocab", "embed")), ("final_norm", ("norm",)))}
    out["layers"] = {k: names[k] for k in shapes["layers"]}
    if "lm_head" in shapes:
        out["lm_head"] = ("embed", "vocab")
    return out


@functools.partial(jax.jit, static_argnums=(0, 2))
def init_params(config: ModelConfig, key: jax.Array, dtype: str = "float32") -> dict:
    """Random parameters: N(0, 0.02) matrices, unit norms, zero biases (HF's initialiser).

    Jitted as a whole; all matrices are slices of one normal draw (XLA CPU compiles one
    threefry call in under a second, but several seconds for one call per leaf shape).
    """
    is_shape = lambda s: isinstance(s, tuple)
    flat, treedef = jax.tree.flatten_with_path(param_shapes(config), is_leaf=is_shape)
    dt = DTYPES[dtype]
    kinds = [
        "norm" if "norm" in jax.tree_util.keystr(p) else
        "bias" if "bias" in jax.tree_util.keystr(p) else "w"
        for p, _ in flat
    ]  # fmt: skip
    total = sum(math.prod(shape) for (_, shape), k in zip(flat, kinds, strict=True) if k == "w")
    normal = 0.02 * jax.random.normal(key, (total,), jnp.float32)
    out, offset = [], 0
    for (_, shape), kind in zip(flat, kinds, strict=True):
        if kind == "norm":
            out.append(jnp.ones(shape, dt))
        elif kind == "bias":
            out.append(jnp.zeros(shape, dt))
        else:
            size = math.prod(shape)
            out.append(normal[offset : offset + size].reshape(shape).astype(dt))
            offset += size
    return jax.tree.unflatten(treedef, out)
