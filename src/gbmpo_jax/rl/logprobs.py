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

`chunked_token_logprobs` applies the head to ``c = max(1, chunk_tokens // N)`` sequence
positions of all N rows at a time (``jax.lax.map`` over ceil(T / c) chunks), each chunk under
``jax.checkpoint``: the forward keeps one [N,c,V] block alive, and the backward recomputes
each chunk's logits from its [N,c,E] hidden slice instead of storing [N,T,V]. When one chunk
covers all T positions (T <= c) there is nothing to bound: the head runs once without the
checkpoint (the update then costs 3 head passes, not 4). The chunks run
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
2. ``chunk_tokens = 0`` disables chunking (full logits, the plain path) for any model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


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
    temperature); the entropy carries no gradient (a metric)."""
    z = logits.astype(jnp.float32) / temperature
    logz = jax.nn.log_softmax(z, axis=-1)
    logp = jnp.take_along_axis(logz, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    ent = -jnp.sum(jnp.exp(logz) * logz, axis=-1)
    return logp, jax.lax.stop_gradient(ent)


def chunked_token_logprobs(
    head_fn: Callable, params, hidden, targets, temperature: float, chunk_tokens: int
):
    """`token_logprobs` of ``head_fn(params, hidden)`` without materialising [N,T,V].

    hidden [N,T,E], targets [N,T] int -> (logp [N,T], entropy [N,T]) float32. Chunks of
    ``c = max(1, chunk_tokens // N)`` positions (static), rematerialised in the backward."""
    n, t = targets.shape
    c = min(max(1, chunk_tokens // max(n, 1)), t)
    k = -(-t // c)
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
    ``chunk_tokens > 0`` goes through `chunked_token_logprobs`; any other through the full
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
    if chunk_tokens > 0:
        return chunked_token_logprobs(
            apply_fn.head_fn, params, hidden, targets, temperature, chunk_tokens
        )
    return token_logprobs(apply_fn.head_fn(params, hidden), targets, temperature)
