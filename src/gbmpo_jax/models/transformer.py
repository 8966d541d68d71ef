"""Decoder-only transformer (Llama / Qwen2 / Qwen3) as pure functions over a params pytree.

One layer, for residual stream x [B,T,E] (pre-norm, as in Llama, arXiv 2302.13971):

    h   = RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g
    q,k,v = h Wq (+bq), h Wk (+bk), h Wv (+bv)     q [B,T,H,D], k,v [B,T,Hkv,D]   (GQA)
    q,k = RMSNorm_D(q), RMSNorm_D(k)                  (Qwen3 only, per head)
    q,k = RoPE(q, pos), RoPE(k, pos)                  rotate-half layout, as HF
    a   = softmax(q k^T / sqrt(D) + bias) v           bias = 0 on allowed keys, -1e30 elsewhere
    x   = x + a Wo
    x   = x + (silu(h' Wg) * (h' Wu)) Wd,  h' = RMSNorm(x)

Parameters (`params`: shapes, logical axes, init; leading axis L on every layer leaf; layers
run with `lax.scan`):

    embed [V,E]            lm_head [E,V] (untied only)     final_norm [E]
    layers: attn_norm [L,E]  q [L,E,H,D]  k,v [L,E,Hkv,D]  o [L,H,D,E]
            q_bias [L,H,D], k_bias/v_bias [L,Hkv,D] (Qwen2)   q_norm/k_norm [L,D] (Qwen3)
            mlp_norm [L,E]  gate,up [L,E,F]  down [L,F,E]

Projections go through `dense.dense` (float32 accumulation; a backward that transposes the
narrower operand of each weight gradient), the MLP through `dense.swiglu` and attention
through `_attend`: both backwards recompute their elementwise intermediates (and attention
its probabilities) instead of keeping them from the forward, which on the "23.6M" benchmark
update cut the compiled temporaries from 2.1 to 1.3 GB at the same speed. RoPE lives in
`rope`.

Shared prompts (`hidden_shared_prompt`): when each group of G rows carries the same prompt (a
rollout's layout), the prompt runs once per group and the completions attend to its repeated
keys/values - the same numbers as `hidden` on the full rows for N/G*P + N*T instead of
N*(P+T) tokens, in the forward and in the backward.

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

import jax
import jax.numpy as jnp
from jax import lax

from gbmpo_jax.models.config import DTYPES, ModelConfig
from gbmpo_jax.models.dense import after, dense, swiglu
from gbmpo_jax.models.rope import rope as _rope
from gbmpo_jax.models.rope import rope_tables as _rope_tables

_NEG = -1e30  # additive bias for disallowed keys (finite: rows with no key stay NaN-free)


# --------------------------------------------------------------------------- building blocks
def positions_from_mask(mask: jax.Array) -> jax.Array:
    """RoPE positions of a left-padded batch: cumsum(mask) - 1, clipped at 0. [B,T] int32."""
    mask = jnp.asarray(mask).astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)


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
    K = k.shape[1]
    G = H // K
    q = q.reshape(B, T, K, G, D).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, D)
    o = _attend(q, k, v, bias, G, dtype)
    return o.astype(dtype).reshape(B, K, G, T, D).transpose(0, 3, 1, 2, 4).reshape(B, T, H * D)


def _scores(q, k, bias, G: int):
    """q k^T + bias, float32 [B,K,G*T,S]; q [B,K,G*T,D], k [B,K,S,D], bias [B,T,S]."""
    B, K, GT, _ = q.shape
    s = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
    return (s.reshape(B, K, G, GT // G, -1) + bias[:, None, None]).reshape(B, K, GT, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attend(q, k, v, bias, G: int, dtype):
    """softmax(q k^T + bias) v, float32 [B,K,G*T,D].

    The backward keeps q, k, v and the row max and log-sum, and recomputes the
    probabilities p = exp(q k^T + bias - lse) (one batched matmul) instead of keeping p and
    the softmax's intermediates alive from the forward: two [B,K,G*T,S] float32 buffers per
    layer (~40 MB per layer on the "23.6M" benchmark update). With dO the output's
    cotangent: dV = p^T dO, dP = dO V^T, dS = p (dP - rowsum(p dP)), dQ = dS K, dK = dS^T Q
    (rowsum(p dP) = rowsum(dO o): the output need not be kept either)."""
    return _attend_fwd(q, k, v, bias, G, dtype)[0]


def _attend_fwd(q, k, v, bias, G, dtype):
    s = _scores(q, k, bias, G)
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    den = jnp.sum(e, axis=-1, keepdims=True)
    p = (e / den).astype(dtype)
    o = jnp.einsum("bkqs,bksd->bkqd", p, v, preferred_element_type=jnp.float32)
    # max and log-sum apart: m + log(den) rounds to m for a row with no allowed key (m =
    # -1e30), whose uniform softmax the backward must reproduce
    return o, (q, k, v, bias, m, jnp.log(den))


def _attend_bwd(G, dtype, res, do):
    q, k, v, bias, m, log_den = res
    f32 = jnp.float32
    # `after` on q: the recompute may not start before dO exists, and is not the forward's
    # q k^T to XLA's CSE (else XLA:CPU merges or hoists it into the forward, and the scores
    # live until here after all)
    # (m too: its broadcast is otherwise shared with the forward's, a [.., S] buffer)
    tie = after(do)
    p = jnp.exp((_scores(q + tie.astype(q.dtype), k, bias, G) - (m + tie)) - log_den)
    dod = do.astype(dtype)
    dv = jnp.einsum("bkqs,bkqd->bksd", p.astype(dtype), dod, preferred_element_type=f32)
    dp = jnp.einsum("bkqd,bksd->bkqs", dod, v, preferred_element_type=f32)
    ds = (p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))).astype(dtype)
    dq = jnp.einsum("bkqs,bksd->bkqd", ds, k, preferred_element_type=f32)
    dk = jnp.einsum("bkqs,bkqd->bksd", ds, q, preferred_element_type=f32)
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), jnp.zeros_like(bias))


_attend.defvjp(_attend_fwd, _attend_bwd)


def _layer(config: ModelConfig, x, lp, cos, sin, bias, kv):
    """One transformer block. x [B,T,E] f32; kv = None (self-attention over the T tokens;
    returns their head-major keys/values [B,Hkv,T,D]), (prefix_k, prefix_v) (head-major
    [B,Hkv,P,D] keys/values of slots before the T tokens) or (cache_k, cache_v, layer, index)."""
    c, dt = config, config.dtype
    w = jax.tree.map(lambda a: a.astype(dt), lp)
    h = _rms_norm(x, lp["attn_norm"], c.rms_norm_eps).astype(dt)
    B, T, E = h.shape
    q = dense(h, w["q"].reshape(E, -1), dt).reshape(B, T, c.num_heads, c.head_dim)
    k = dense(h, w["k"].reshape(E, -1), dt).reshape(B, T, c.num_kv_heads, c.head_dim)
    v = dense(h, w["v"].reshape(E, -1), dt).reshape(B, T, c.num_kv_heads, c.head_dim)
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
        new_kv = (k, v)
    elif len(kv) == 2:  # a shared prefix: its slots, then the T new ones
        k = jnp.concatenate([kv[0].astype(dt), k.transpose(0, 2, 1, 3)], axis=2)
        v = jnp.concatenate([kv[1].astype(dt), v.transpose(0, 2, 1, 3)], axis=2)
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
    x = x + dense(a, wo, jnp.float32)
    h = _rms_norm(x, lp["mlp_norm"], c.rms_norm_eps).astype(dt)
    return x + swiglu(h, w["gate"], w["up"], w["down"], dt), new_kv


def _bias(mask, offset, T: int):
    """Additive attention bias [B,T,S] f32: query t (at slot offset + t) sees the slots
    s <= offset + t with mask[b, s] set."""
    q_slot = offset + jnp.arange(T, dtype=jnp.int32)
    allowed = (jnp.arange(mask.shape[-1], dtype=jnp.int32)[None, :] <= q_slot[:, None])[None]
    return jnp.where(allowed & mask.astype(bool)[:, None, :], 0.0, _NEG).astype(jnp.float32)


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
    return dense(h.astype(c.dtype), w.astype(c.dtype), jnp.float32, c.tie_word_embeddings)


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
    bias = _bias(mask, offset, T)
    cos, sin = _rope_tables(c, positions)
    x = jnp.take(params["embed"], input_ids, axis=0).astype(jnp.float32)

    def body(carry, xs):
        x, kv = carry
        lp, layer = xs
        kv_in = None if kv is None else (*kv, layer, offset)
        x, new_kv = _layer(c, x, lp, cos, sin, bias, kv_in)
        return (x, None if kv is None else new_kv), None

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


def hidden_shared_prompt(
    params, config: ModelConfig, input_ids, attention_mask, t: int, group: int
):
    """``hidden(...)[0][:, P-1 : P-1+t]`` for rows whose prompt is shared within each group.

    input_ids, attention_mask [N,P+t]: rows g*G .. g*G+G-1 (G = ``group``) carry the same
    first P columns (a prompt and its left padding, as the rollout lays them out). The prompt
    then runs once per group ([N/G,P] tokens) and its per-layer keys/values are repeated to
    the group's rows, where the t completion tokens attend to them: the trunk processes
    N/G*P + N*t tokens instead of N*(P+t), and in the backward the gradients of the G
    completions flow into the one prompt pass (the sum of the repeat's transpose). Causal
    attention makes this exact: no prompt position sees a completion token.

    Returns hidden [N,t,E] in ``compute_dtype``: the final hidden states of the positions
    whose logits predict the t completion tokens (P-1 .. P+t-2).
    """
    c = config
    N, S = input_ids.shape
    P = S - t
    if group < 1 or N % group or P < 1 or t < 1:
        raise ValueError(f"{N} rows of {S} tokens do not split into groups of {group} rows with "
                         f"{t} completion tokens after a prompt")  # fmt: skip
    positions = positions_from_mask(attention_mask)
    ids_p, mask_p, pos_p = (
        input_ids[::group, :P],
        attention_mask[::group, :P],
        positions[::group, :P],
    )
    bias_p = _bias(mask_p, jnp.zeros((), jnp.int32), P)  # [N/G,P,P]
    bias_c = _bias(attention_mask, jnp.asarray(P, jnp.int32), t)  # [N,t,P+t]
    rope_p, rope_c = _rope_tables(c, pos_p), _rope_tables(c, positions[:, P:])
    embed = lambda ids: jnp.take(params["embed"], ids, axis=0).astype(jnp.float32)  # noqa: E731
    rep = lambda a: jnp.repeat(a, group, axis=0)  # noqa: E731

    def body(carry, lp):
        xp, xc = carry
        xp, (pk, pv) = _layer(c, xp, lp, *rope_p, bias_p, None)
        xc, _ = _layer(c, xc, lp, *rope_c, bias_c, (rep(pk), rep(pv)))
        return (xp, xc), None

    if c.remat:
        body = jax.checkpoint(body, prevent_cse=False)
    carry = (embed(ids_p), embed(input_ids[:, P:]))
    if isinstance(params["layers"], tuple):
        for lp in params["layers"]:
            carry, _ = body(carry, lp)
    else:
        carry, _ = lax.scan(body, carry, params["layers"], unroll=not c.scan_layers)
    xp, xc = carry
    x = jnp.concatenate([rep(xp[:, -1:]), xc[:, :-1]], axis=1)  # positions P-1 .. P+t-2
    return _rms_norm(x, params["final_norm"], c.rms_norm_eps).astype(c.dtype)
