"""Token log-probs and entropies of sampled tokens, without the [N,T,V] logits at real vocabularies.

The train step needs, for each completion token y_t, the float32

    logp_t = z_t[y_t] - logsumexp(z_t),   H_t = logsumexp(z_t) - sum_v softmax(z_t)_v z_t[v],
    z_t = (h_t @ W) / temperature,        h_t [E] hidden state, W [E,V] the lm_head,

(H_t written as -sum p log p in `token_logprobs`). Naively z is materialised for every
position: at Qwen3's V = 151,669 and 32 x 256 completion tokens that is 8,192 x 151,669 fp32 =
5 GB per pass, and the update's backward keeps it (or its softmax) alive as well.

Two model contracts:

  * plain: ``apply_fn(params, input_ids [N,L], attention_mask [N,L]) -> logits [N,L,V]``
    (any callable; e.g. a user's flax model through `models.flax_adapter`). Log-probs come
    from the full logits (`token_logprobs`), as before.
  * split: ``SplitHead(hidden_fn, head_fn)`` with ``hidden_fn(params, ids, mask) -> hidden
    [N,L,E]`` (after the final norm) and ``head_fn(params, hidden [...,E]) -> logits
    [...,V]`` float32. It is itself a plain ``apply_fn`` (``head_fn(hidden_fn(...))``), so
    every consumer of the plain contract (sampler, SFT, evaluation) keeps working; the
    log-prob passes see the split and call `chunked_token_logprobs`.

`chunked_token_logprobs` applies the head to at most ``max(1, chunk_tokens // N)`` sequence
positions of all N rows at a time (``jax.lax.map`` over k = ceil(T / that) chunks of
c = ceil(T / k) positions, so the padding stays below k positions), each chunk under
``jax.checkpoint``: the forward keeps one [N,c,V] block alive, and the backward recomputes
each chunk's logits from its [N,c,E] hidden slice instead of storing [N,T,V]. When one chunk
covers all T positions there is nothing to bound: the head runs once without the checkpoint
(the update then costs 3 head passes, not 4).

Chunk size (`chunk_tokens_for`): ``chunk_tokens = -1`` (the default, "auto") takes as many
tokens as keep one chunk's fp32 logits within ``LOGIT_CHUNK_BYTES`` (256 MiB): 1,365 tokens
at SmolLM2's V = 49,152, 442 at Qwen3's 151,669, and the whole batch at a toy vocabulary,
where chunking would only add the checkpoint's second head pass. The chunks run
over the sequence, not over flattened rows, so under data parallelism each chunk still spans
every device's rows.

Shared prompts: ``completion_logprobs(..., group=G)`` on a `SplitHead` with a
``shared_prompt_fn`` runs each group's prompt once (`models.hidden_shared_prompt`). On a
rollout batch (4 prompts x G = 8, 128 prompt + 64 completion tokens, SmolLM2-135M) that is
2,560 instead of 6,144 trunk tokens per pass: the update fell from 21 s to 8.7 s on a 2-core
CPU (BENCHMARKS.md). The caller promises the layout (`StepConfig.shared_prompts`).

Exactness: every logit is the same E-long dot product as in the full head (chunking only
splits the row set of the matmul), and the log-softmax is over the full vocabulary per
position, so values and gradients equal the naive ones up to fp32 rounding (tests compare
both on a tiny model with a 151,669-token vocabulary).

Deliberate deviations: 1. the sequence is zero-padded to a multiple of c (padded positions
are computed and dropped; their cotangent is zero, so gradients are unchanged);
2. ``chunk_tokens = 0`` disables chunking (full logits, the plain path) for any model; a
positive value is a fixed number of tokens per chunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from gbmpo_jax.scale.memory import AUTO, LOGIT_CHUNK_BYTES, chunk_tokens_for  # noqa: F401


@dataclasses.dataclass(frozen=True)
class SplitHead:
    """A causal LM split at its lm_head; callable with the plain ``apply_fn`` contract.

    hidden_fn: (params, input_ids [N,L], attention_mask [N,L]) -> hidden [N,L,E].
    head_fn: (params, hidden [...,E]) -> logits [...,V] float32.
    """

    hidden_fn: Callable
    head_fn: Callable
    # optional (params, ids [N,P+t], mask, t, group) -> hidden [N,t,E] at positions P-1 ..
    # P+t-2, running a prompt shared by each group of rows once (`hidden_shared_prompt`)
    shared_prompt_fn: Callable | None = None

    def __call__(self, params, input_ids, attention_mask):
        return self.head_fn(params, self.hidden_fn(params, input_ids, attention_mask))


def token_logprobs(logits, targets, temperature: float):
    """(logp [...], entropy [...]) float32 of ``targets`` [...] under softmax(logits [...,V] /
    temperature); the entropy carries no gradient (a metric).

    A custom VJP keeps the passes over [...,V] to what the math needs (at V = 49,152 each
    one moves 200 KB per token): the forward reads z twice (its max; then sum_v e_v and
    sum_v e_v z_v together, e = exp(z - max), giving logsumexp and the entropy
    lse - sum e z / sum e); the backward writes dz = g (onehot(y) - exp(z - lse)) in one
    pass. Autodiff of log_softmax + gather stored log-softmax and scattered the gather's
    cotangent into a zero [...,V] block first."""
    z = logits.astype(jnp.float32)
    z = z if temperature == 1.0 else z / temperature
    return _logp_entropy(z, targets.astype(jnp.int32))


def _logp_lse_entropy(z, y):
    m = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    e = jnp.exp(z - m)
    s = jnp.sum(e, axis=-1)
    lse = m[..., 0] + jnp.log(s)
    zy = jnp.take_along_axis(z, y[..., None], axis=-1)[..., 0]
    return zy - lse, lse, lse - jnp.sum(e * z, axis=-1) / s


@jax.custom_vjp
def _logp_entropy(z, y):
    logp, _, ent = _logp_lse_entropy(z, y)
    return logp, ent


def _logp_entropy_fwd(z, y):
    logp, lse, ent = _logp_lse_entropy(z, y)
    return (logp, ent), (z, y, lse)


def _logp_entropy_bwd(res, g):
    z, y, lse = res
    g_logp, _ = g  # the entropy is a metric: no gradient
    onehot = jnp.arange(z.shape[-1], dtype=jnp.int32) == y[..., None]
    dz = g_logp[..., None] * (onehot.astype(z.dtype) - jnp.exp(z - lse[..., None]))
    return dz, None


_logp_entropy.defvjp(_logp_entropy_fwd, _logp_entropy_bwd)


def chunked_token_logprobs(
    head_fn: Callable, params, hidden, targets, temperature: float, chunk_tokens: int
):
    """`token_logprobs` of ``head_fn(params, hidden)`` without materialising [N,T,V].

    hidden [N,T,E], targets [N,T] int -> (logp [N,T], entropy [N,T]) float32. Chunks of at
    most ``max(1, chunk_tokens // N)`` positions (static; ``chunk_tokens`` -1 = auto, see
    `chunk_tokens_for`), balanced over the k chunks, rematerialised in the backward."""
    n, t = targets.shape
    if chunk_tokens < 0:
        vocab = jax.eval_shape(head_fn, params, hidden[:, :1]).shape[-1]
        chunk_tokens = chunk_tokens_for(chunk_tokens, vocab)
    k = -(-t // min(max(1, chunk_tokens // max(n, 1)), t))
    c = -(-t // k)  # the same k chunks, padded by < k positions instead of < c
    if k == 1:
        # one chunk covers the sequence: its residuals are the one [N,t,V] block the bound
        # allows anyway, so the checkpoint would only buy a second head forward
        return token_logprobs(head_fn(params, hidden), targets, temperature)
    pad = k * c - t
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hs = jnp.moveaxis(hidden.reshape(n, k, c, hidden.shape[-1]), 1, 0)  # [k,N,c,E]
    ys = jnp.moveaxis(targets.reshape(n, k, c), 1, 0)  # [k,N,c]

    @jax.checkpoint
    def one(p, h, y):
        return token_logprobs(head_fn(p, h), y, temperature)

    logp, ent = jax.lax.map(lambda xs: one(params, *xs), (hs, ys))  # [k,N,c] each
    unchunk = lambda x: jnp.moveaxis(x, 0, 1).reshape(n, k * c)[:, :t]  # noqa: E731
    return unchunk(logp), unchunk(ent)


def completion_logprobs(
    apply_fn, params, input_ids, attention_mask, t: int, temperature, chunk_tokens: int = 0,
    group: int = 1,
):  # fmt: skip
    """(logp, entropy) [N,t] of the last t tokens of ``input_ids`` [N,P+t]: the logits at
    positions P-1 .. P+t-2 predict completion tokens 0 .. t-1. A `SplitHead` model with
    ``chunk_tokens != 0`` goes through `chunked_token_logprobs`; 0 through the full
    logits (of the t positions only). ``group`` > 1 promises that each run of ``group`` consecutive rows shares its
    first P columns (ids and mask): a `SplitHead` with a ``shared_prompt_fn`` then runs
    that prompt once per group (same values; the caller guarantees the layout)."""
    p = input_ids.shape[1] - t
    targets = input_ids[:, p:]
    if not isinstance(apply_fn, SplitHead):
        logits = apply_fn(params, input_ids, attention_mask)[:, p - 1 : p - 1 + t]
        return token_logprobs(logits, targets, temperature)
    if group > 1 and apply_fn.shared_prompt_fn is not None:
        hidden = apply_fn.shared_prompt_fn(params, input_ids, attention_mask, t, group)
    else:
        hidden = apply_fn.hidden_fn(params, input_ids, attention_mask)[:, p - 1 : p - 1 + t]
    if chunk_tokens != 0:
        return chunked_token_logprobs(
            apply_fn.head_fn, params, hidden, targets, temperature, chunk_tokens
        )
    return token_logprobs(apply_fn.head_fn(params, hidden), targets, temperature)
