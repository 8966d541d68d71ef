"""Decoder-only transformer (Llama / Qwen2 / Qwen3) as pure functions over a params pytree.

One layer, for residual stream x [B,T,E] (pre-norm, as in Llama, arXiv 2302.13971):

    h   = RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g
    q,k,v = h Wq (+bq), h Wk (+bk), h Wv (+bv)     q [B,T,H,D], k,v [B,T,Hkv,D]   (GQA)
    q,k = RMSNorm_D(q), RMSNorm_D(k)                  (Qwen3 only, per head)
    q,k = RoPE(q, pos), RoPE(k, pos)                  rotate-half layout, as HF
    a   = softmax(q k^T / sqrt(D) + bias) v           bias = 0 on allowed keys, -1e30 elsewhere
    x   = x + a Wo
    x   = x + (silu(h' Wg) * (h' Wu)) Wd,  h' = RMSNorm(x)

Parameters (leading axis L on every layer leaf; layers run with `lax.scan`):

    embed [V,E]            lm_head [E,V] (untied only)     final_norm [E]
    layers: attn_norm [L,E]  q [L,E,H,D]  k,v [L,E,Hkv,D]  o [L,H,D,E]
            q_bias [L,H,D], k_bias/v_bias [L,Hkv,D] (Qwen2)   q_norm/k_norm [L,D] (Qwen3)
            mlp_norm [L,E]  gate,up [L,E,F]  down [L,F,E]

Decode layout (`unstack_layers`, `unstack_cache`): "layers" as a tuple of L per-layer dicts
and the cache as tuples of L head-major [B,Hkv,S,D] buffers; `apply` then unrolls the layers
(no per-step weight copies out of the stacked arrays, no cache transposes on XLA CPU).

Deliberate deviations from the HF reference:
1. The residual stream is kept in float32 even for bfloat16 compute (HF keeps it in the
   parameter dtype); matmul inputs are cast to ``config.compute_dtype``, attention scores,
   softmax, norms, RoPE and logits are float32.
2. Query rows with no allowed key (left padding) get a uniform softmax instead of NaN; their
   outputs are meaningless and must be masked by the caller, as in HF.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gbmpo_jax.models.config import DTYPES, ModelConfig

_NEG = -1e30  # additive bias for disallowed keys (finite: rows with no key stay NaN-free)


# --------------------------------------------------------------------------- parameters
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


# --------------------------------------------------------------------------- building blocks
def positions_from_mask(mask: jax.Array) -> jax.Array:
    """RoPE positions of a left-padded batch: cumsum(mask) - 1, clipped at 0. [B,T] int32."""
    mask = jnp.asarray(mask).astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)


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


def _rope_tables(config: ModelConfig, positions: jax.Array):
    """cos, sin [B,T,1,D/2] float32 for positions [B,T]."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(config))
    return jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]


def _rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on x [B,T,H,D] (computed in float32, returned in x.dtype)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def _rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis, in float32; returns float32."""
    x = x.astype(jnp.float32)
    x = x * lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return x * weight.astype(jnp.float32)


def _attention(q, k, v, bias, dtype):
    """Fused GQA attention. q [B,T,H,D], k/v [B,Hkv,S,D] (head-major), bias [B,T,S] f32
    -> [B,T,H*D].

    The G = H/Hkv query heads sharing a kv head are folded into the query rows, so both
    contractions are plain batched matmuls over (B, Hkv) in batch-major layout; on XLA CPU
    this is ~20% faster in forward+backward than the 5-d einsum over (b,k,g,t,s).
    """
    B, T, H, D = q.shape
    K, S = k.shape[1], k.shape[2]
    G = H // K
    q = q.reshape(B, T, K, G, D).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, D)
    s = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
    s = s.reshape(B, K, G, T, S) + bias[:, None, None]
    p = jax.nn.softmax(s, axis=-1).astype(dtype).reshape(B, K, G * T, S)
    o = jnp.einsum("bkqs,bksd->bkqd", p, v, preferred_element_type=jnp.float32)
    return o.astype(dtype).reshape(B, K, G, T, D).transpose(0, 3, 1, 2, 4).reshape(B, T, H * D)


def _layer(config: ModelConfig, x, lp, cos, sin, bias, kv):
    """One transformer block. x [B,T,E] f32; kv = None or (cache_k, cache_v, layer, index)."""
    c, dt = config, config.dtype
    w = jax.tree.map(lambda a: a.astype(dt), lp)
    h = _rms_norm(x, lp["attn_norm"], c.rms_norm_eps).astype(dt)
    q = jnp.einsum("bte,ehd->bthd", h, w["q"])
    k = jnp.einsum("bte,ehd->bthd", h, w["k"])
    v = jnp.einsum("bte,ehd->bthd", h, w["v"])
    if c.attention_bias:
        q, k, v = q + w["q_bias"], k + w["k_bias"], v + w["v_bias"]
    if c.qk_norm:
        q = _rms_norm(q, lp["q_norm"], c.rms_norm_eps)
        k = _rms_norm(k, lp["k_norm"], c.rms_norm_eps)
    q = (_rope(q, cos, sin) * (c.head_dim**-0.5)).astype(dt)
    k = _rope(k, cos, sin).astype(dt)
    new_kv = None
    if kv is None:
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B,Hkv,T,D]
    elif kv[2] is None:  # one layer's head-major cache [B,Hkv,S,D] (decode layout)
        ck, cv, _, index = kv
        zero = jnp.zeros((), jnp.int32)
        start = (zero, zero, index, zero)
        ck = lax.dynamic_update_slice(ck, k.transpose(0, 2, 1, 3).astype(ck.dtype), start)
        cv = lax.dynamic_update_slice(cv, v.transpose(0, 2, 1, 3).astype(cv.dtype), start)
        k, v, new_kv = ck.astype(dt), cv.astype(dt), (ck, cv)
    else:  # stacked cache [L,B,S,Hkv,D]
        ck, cv, layer, index = kv
        zero = jnp.zeros((), jnp.int32)
        start = (layer, zero, index, zero, zero)
        ck = lax.dynamic_update_slice(ck, k.astype(ck.dtype)[None], start)
        cv = lax.dynamic_update_slice(cv, v.astype(cv.dtype)[None], start)
        k = lax.dynamic_index_in_dim(ck, layer, 0, keepdims=False).astype(dt)
        v = lax.dynamic_index_in_dim(cv, layer, 0, keepdims=False).astype(dt)
        k, v, new_kv = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), (ck, cv)
    a = _attention(q, k, v, bias, dt)  # [B,T,H*D]
    wo = w["o"].reshape(-1, w["o"].shape[-1])  # [H*D,E]
    x = x + jnp.einsum("btf,fe->bte", a, wo, preferred_element_type=jnp.float32)
    h = _rms_norm(x, lp["mlp_norm"], c.rms_norm_eps).astype(dt)
    g = jnp.einsum("bte,ef->btf", h, w["gate"])
    u = jnp.einsum("bte,ef->btf", h, w["up"])
    y = jnp.einsum("btf,fe->bte", jax.nn.silu(g) * u, w["down"], preferred_element_type=jnp.float32)
    return x + y, new_kv


# --------------------------------------------------------------------------- public functions
def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
    """Empty KV cache {"k","v"}: [L,B,S,Hkv,D] zeros in `dtype` (default: compute dtype)."""
    dt = config.dtype if dtype is None else DTYPES[dtype] if isinstance(dtype, str) else dtype
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}


def unstack_layers(params) -> dict:
    """Decode layout of `params`: "layers" becomes a tuple of L per-layer dicts.

    `apply` then runs the layers as an unrolled Python loop over separate buffers instead of
    a `lax.scan` over the stacked [L,...] leaves. On XLA CPU a scan copies every layer's
    weights out of the stacked arrays before its matmuls; for one-token decode steps that
    copy costs as much as the matmuls themselves. Call it once, outside the decode loop.
    """
    layers = params["layers"]
    if isinstance(layers, tuple):
        return params
    L = jax.tree.leaves(layers)[0].shape[0]
    return {**params, "layers": tuple(jax.tree.map(lambda a, i=i: a[i], layers) for i in range(L))}


def unstack_cache(cache: dict) -> dict:
    """Decode layout of an `init_cache` cache: {"k","v"} tuples of L head-major [B,Hkv,S,D].

    Head-major slots let attention read each layer's keys/values without a transpose copy
    per step; `apply` writes the new tokens in place. Use with `unstack_layers` params.
    """
    if isinstance(cache["k"], tuple):
        return cache
    return {
        n: tuple(cache[n][i].transpose(0, 2, 1, 3) for i in range(cache[n].shape[0]))
        for n in ("k", "v")
    }


def apply(
    params,
    config: ModelConfig,
    input_ids,
    positions,
    attention_mask=None,
    cache=None,
    cache_index=None,
):
    """Logits for `input_ids`; see DESIGN.md "Model layer". Equals
    ``lm_head(params, config, hidden(...)[0])``; arguments and cache as in `hidden`.
    Returns (logits [B,T,V] float32, updated cache or None)."""
    h, new_cache = hidden(params, config, input_ids, positions, attention_mask, cache, cache_index)
    return lm_head(params, config, h), new_cache


def lm_head(params, config: ModelConfig, h):
    """Logits [...,V] float32 of final hidden states ``h`` [...,E] (the tied embedding or
    ``lm_head``, in ``compute_dtype`` with float32 accumulation)."""
    c = config
    w = params["embed"] if c.tie_word_embeddings else params["lm_head"]
    spec = "...e,ve->...v" if c.tie_word_embeddings else "...e,ev->...v"
    out = jnp.einsum(spec, h.astype(c.dtype), w.astype(c.dtype), preferred_element_type=jnp.float32)
    return out


def hidden(
    params,
    config: ModelConfig,
    input_ids,
    positions,
    attention_mask=None,
    cache=None,
    cache_index=None,
):
    """Final hidden states (after the final norm) for `input_ids`: the trunk of `apply`.

    Args:
      params: params pytree (see module docstring), fp32 or bf16.
      config: static ModelConfig.
      input_ids: [B,T] int32.  positions: [B,T] int32 RoPE positions.
      attention_mask: without cache [B,T] (1 = real token; None = all real); with cache [B,S]
        marking valid slots, the new slots included.
      cache: None or `init_cache(...)`; the T new keys/values are written at slots
        cache_index .. cache_index+T-1 and a query at slot s attends to valid slots <= s.
      cache_index: int32 scalar slot of the first new token (with cache).
    Returns:
      (hidden [B,T,E] in ``compute_dtype``, updated cache or None).
    """
    c = config
    B, T = input_ids.shape
    if positions.shape != (B, T):
        raise ValueError(f"positions shape {positions.shape} != input_ids shape {(B, T)}")
    if cache is None:
        mask = jnp.ones((B, T), bool) if attention_mask is None else attention_mask
        offset = jnp.zeros((), jnp.int32)
        want = (B, T)
    else:
        if cache_index is None or attention_mask is None:
            raise ValueError("apply with a cache needs cache_index and a [B,S] attention_mask")
        mask, offset = attention_mask, jnp.asarray(cache_index, jnp.int32)
        unstacked = isinstance(cache["k"], tuple)
        want = cache["k"][0].shape[0:3:2] if unstacked else cache["k"].shape[1:3]
        if isinstance(cache_index, int) and not 0 <= cache_index <= want[1] - T:
            raise ValueError(
                f"cache_index {cache_index} + {T} new tokens does not fit the cache's "
                f"{want[1]} slots: make init_cache(max_len=...) larger"
            )
    if mask.shape != want:
        raise ValueError(
            f"attention_mask shape {mask.shape} != {want} "
            f"({'[B,S] cache slots' if cache is not None else '[B,T]'})"
        )
    S = mask.shape[-1]
    q_slot = offset + jnp.arange(T, dtype=jnp.int32)
    allowed = (jnp.arange(S, dtype=jnp.int32)[None, :] <= q_slot[:, None])[None] & (
        mask.astype(bool)[:, None, :]
    )
    bias = jnp.where(allowed, 0.0, _NEG).astype(jnp.float32)  # [B,T,S]
    cos, sin = _rope_tables(c, positions)
    x = jnp.take(params["embed"], input_ids, axis=0).astype(jnp.float32)

    def body(carry, xs):
        x, kv = carry
        lp, layer = xs
        kv_in = None if kv is None else (*kv, layer, offset)
        x, kv = _layer(c, x, lp, cos, sin, bias, kv_in)
        return (x, kv), None

    if c.remat:
        body = jax.checkpoint(body, prevent_cse=False)
    if isinstance(params["layers"], tuple):  # unstack_layers: unrolled over separate buffers
        if cache is not None and not isinstance(cache["k"], tuple):
            raise ValueError("unstack_layers params need an unstack_cache cache (or none)")
        ks, vs = [], []
        for i, lp in enumerate(params["layers"]):
            kv_in = None if cache is None else (cache["k"][i], cache["v"][i])
            (x, kv), _ = body((x, kv_in), (lp, None))
            if kv is not None:
                ks.append(kv[0])
                vs.append(kv[1])
        kv = None if cache is None else (tuple(ks), tuple(vs))
    else:
        if cache is not None and isinstance(cache["k"], tuple):
            raise ValueError("an unstack_cache cache needs unstack_layers params")
        kv0 = None if cache is None else (cache["k"], cache["v"])
        layers = jnp.arange(c.num_layers, dtype=jnp.int32)
        # scan_layers False unrolls: the rolled scan's backward is ~1.4x slower on XLA:CPU
        (x, kv), _ = lax.scan(body, (x, kv0), (params["layers"], layers),
                              unroll=not c.scan_layers)  # fmt: skip
    h = _rms_norm(x, params["final_norm"], c.rms_norm_eps).astype(c.dtype)
    new_cache = None if kv is None else {"k": kv[0], "v": kv[1]}
    return h, new_cache
