"""Rotary position embeddings (RoPE, Su et al. 2104.09864) in HF's rotate-half layout.

For head vector x [D] at position m, with inverse frequencies inv [D/2] and halves x1, x2:

    rope(x) = concat(x1 cos(m inv) - x2 sin(m inv),  x2 cos(m inv) + x1 sin(m inv))

`rope_inv_freq` follows HF's default, linear and llama3 (Llama 3.1) scalings exactly
(float32, computed on the host once per config).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gbmpo_jax.models.config import ModelConfig


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies [D/2] (float32, computed like HF incl. linear / llama3 scaling)."""
    D = config.head_dim
    exps = np.arange(0, D, 2, dtype=np.int64).astype(np.float32) / np.float32(D)
    inv = (1.0 / (np.float32(config.rope_theta) ** exps)).astype(np.float32)
    if config.rope_scaling is None:
        return inv
    s = dict(config.rope_scaling)
    factor = float(s["factor"])
    if s["rope_type"] == "linear":
        return (inv / factor).astype(np.float32)
    # llama3 (Llama 3.1): long wavelengths divided by `factor`, short kept, smooth in between.
    old = float(s.get("original_max_position_embeddings", config.max_position_embeddings))
    lo, hi = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    low_wavelen, high_wavelen = old / lo, old / hi
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(config: ModelConfig, positions: jax.Array):
    """cos, sin [B,T,1,D/2] float32 for positions [B,T]."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(config))
    return jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]


def rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on x [B,T,H,D] (computed in float32, returned in x.dtype)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
