"""Rollout engine: batched autoregressive sampling with a shared-prefix KV cache.

For B left-padded prompts and group size G (GRPO, arXiv 2402.03300, samples G completions per
prompt), `generate` returns N = B*G completions of at most T = max_new_tokens tokens:

1. Prefill: each prompt runs through the model once, writing its keys/values into a KV cache of
   P slots (`models.init_cache`, compute dtype).
2. Share: the prefilled cache, the last-position logits and the masks are repeated G times along
   the batch axis (row n = b*G + g), so a prompt is never prefilled G times.
3. Decode: `lax.while_loop`s write one token per step at slot P+t. Each row keeps a done flag
   (set by its first stop token); the loops exit early once every row is done. Finished rows emit
   `pad_token_id` and do not count towards `lengths`. The steps run in a few static chunks
   (`decode_chunks`); before each, the cache grows to the slots that chunk fills, so attention
   never reads the empty tail of a P + T cache. The decode loop uses the unrolled per-layer
   model layout (`models.transformer.unstack_layers` / `unstack_cache`).

The whole rollout is one jitted function (`SamplingConfig` and the model config are static), so
the cache never leaves the device and XLA updates it in place inside the loop carry (no
donation is needed: nothing is passed in that could alias it). `rollout` is the same function
unjitted, for callers that jit it themselves with mesh in/out shardings (batch over data axes).

Log-probs ("old" log-probs for the PPO/GRPO ratio): logprobs[n,t] = log softmax(z / T)[y_t],
with z the raw model logits and T the temperature, i.e. the distribution before the repetition
penalty, min_new_tokens masking and top-k/top-p/min-p filtering. This is the TRL/vLLM
convention and matches what the loss recomputes from logits / T; under filtering the sampling
distribution differs from it (the usual, documented off-policy gap of truncated sampling).

Deviations (see also `logit_processors`):
1. Rows of a truncated completion (no stop token within T) have mask 1 on all T tokens; whether
   to drop them from the loss is the trainer's choice (`truncated`).
2. Prompts are assumed to hold at least one real token per row; an all-padding row gives
   meaningless (but finite) output.

(About 430 lines, over the ~400 guide: prefill, the chunked decode loop and the text front end
share the cache layout and the stop/length bookkeeping; the logit filters already live apart
in `logit_processors`, and splitting the loop from its cache growth would split one invariant.)

Length: over 400 lines; the text-in / text-out helpers at the end (`default_stop_token_ids`,
`generate_text`, `decode`) are the split to make (a `sampler/text.py`). They stay here for
now because evaluation, ES, the step program, the policy and the tests reach them as
`sampling.*` (the tests monkeypatch some), a move for a change of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gbmpo_jax import models
from gbmpo_jax.models.config import canonical_dtype
from gbmpo_jax.models.transformer import unstack_cache, unstack_layers
from gbmpo_jax.sampler import logit_processors as lp

DECODE_CHUNK = 32  # minimum decode steps per statically sized attention chunk
# Chat end-of-turn markers, plus Qwen's end-of-document "<|endoftext|>" (Qwen3's
# generation_config stops on both it and "<|im_end|>"; its tokenizer names only the latter).
END_OF_TURN_TOKENS: tuple[str, ...] = (
    "<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static sampling settings (hashable: a static argument of the jitted rollout); also the
    run config's ``rollout`` section (`config.Config`), where stop_token_ids () and
    pad_token_id are filled from the tokenizer (`policy.build_objective`).

    max_new_tokens: T, completion length budget.    group_size: G samples per prompt.
    temperature > 0 (also scales the returned log-probs when greedy).
    top_k: 0 = off.   top_p in (0, 1]: 1 = off.   min_p in [0, 1): 0 = off.
    repetition_penalty > 0: 1 = off (transformers semantics).
    min_new_tokens: stop tokens are banned before this many new tokens.
    greedy: argmax instead of sampling.   stop_token_ids: EOS and end-of-turn ids.
    pad_token_id: written after a row stops.   cache_dtype: None = the model's compute dtype.
    prompts_per_step: prompts of one training step (the run's batch is prompts x G rows);
    the sampler itself takes whatever prompts it is given.
    """

    max_new_tokens: int = 256
    group_size: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    greedy: bool = False
    stop_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    cache_dtype: str | None = None
    prompts_per_step: int = 1

    def __post_init__(self):
        def bad(field, value, fix):
            raise ValueError(f"{field}={value!r}: {fix}")

        ints = ("max_new_tokens", "group_size", "top_k", "min_new_tokens", "pad_token_id",
                "prompts_per_step")  # fmt: skip
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                bad(name, value, "pass a Python int")
        if self.max_new_tokens < 1:
            bad("max_new_tokens", self.max_new_tokens, "must be >= 1")
        if self.prompts_per_step < 1:
            bad("prompts_per_step", self.prompts_per_step, "must be >= 1")
        if self.group_size < 1:
            bad("group_size", self.group_size, "must be >= 1 (samples per prompt)")
        if not self.temperature > 0:
            bad("temperature", self.temperature, "must be > 0 (use greedy=True for argmax)")
        if not 0 < self.top_p <= 1:
            bad("top_p", self.top_p, "must be in (0, 1]; 1 disables nucleus filtering")
        if self.top_k < 0:
            bad("top_k", self.top_k, "must be >= 0; 0 disables top-k")
        if not 0 <= self.min_p < 1:
            bad("min_p", self.min_p, "must be in [0, 1); 0 disables min-p")
        if not self.repetition_penalty > 0:
            bad("repetition_penalty", self.repetition_penalty, "must be > 0; 1 disables it")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            bad("min_new_tokens", self.min_new_tokens, "must be in [0, max_new_tokens]")
        if self.pad_token_id < 0:
            bad("pad_token_id", self.pad_token_id, "must be a token id >= 0")
        if isinstance(self.stop_token_ids, int | np.integer):
            bad("stop_token_ids", self.stop_token_ids, "pass a tuple of ints, e.g. (eos_id,)")
        stops = tuple(int(s) for s in self.stop_token_ids)
        if any(s < 0 for s in stops):
            bad("stop_token_ids", self.stop_token_ids, "token ids must be >= 0")
        object.__setattr__(self, "stop_token_ids", tuple(dict.fromkeys(stops)))
        if self.cache_dtype is not None:
            object.__setattr__(
                self, "cache_dtype", canonical_dtype(self.cache_dtype, "cache_dtype")
            )
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            object.__setattr__(self, name, float(getattr(self, name)))


class Rollout(NamedTuple):
    """Sampled completions, N = B*G rows (row b*G + g is sample g of prompt b).

    tokens [N,T] int32 (pad after the stop token), mask [N,T] int32 (1 through the first stop
    token inclusive), lengths [N] int32 (= mask.sum(-1)), truncated [N] bool (no stop token
    within T), logprobs [N,T] fp32 (log softmax(logits/temperature) of each token; 0 where
    mask == 0), prompt_ids / prompt_mask [N,P] (the inputs repeated G times).
    """

    tokens: jax.Array
    mask: jax.Array
    lengths: jax.Array
    truncated: jax.Array
    logprobs: jax.Array
    prompt_ids: jax.Array
    prompt_mask: jax.Array


# Logical axes of a Rollout's buffers (rows = "batch"); the mesh maps names to devices.
ROLLOUT_AXES = Rollout(
    tokens=("batch", None), mask=("batch", None), lengths=("batch",), truncated=("batch",),
    logprobs=("batch", None), prompt_ids=("batch", None), prompt_mask=("batch", None),
)  # fmt: skip


# --------------------------------------------------------------------------- prompt batching
def bucket_length(n: int, *, minimum: int = 16, multiple: int = 64) -> int:
    """Padded length for a prompt of n tokens: the next power of two >= max(n, minimum) up to
    `multiple`, then the next multiple of `multiple`. A handful of sizes -> few recompiles."""
    if n < 1:
        raise ValueError(f"prompt length {n} must be >= 1")
    if n > multiple:
        return -(-n // multiple) * multiple
    size = max(1, minimum)
    while size < n:
        size *= 2
    return min(size, multiple)


def pad_prompts(
    prompts: Sequence[Sequence[int]],
    pad_token_id: int,
    *,
    length: int | None = None,
    minimum: int = 16,
    multiple: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists to `length` (default: `bucket_length` of the longest).

    Returns (ids [B,L] int32, mask [B,L] int32 with 1 on real tokens).
    """
    if len(prompts) == 0:
        raise ValueError("pad_prompts needs at least one prompt")
    lens = [len(p) for p in prompts]
    if min(lens) == 0:
        raise ValueError(f"prompt {lens.index(0)} is empty: every prompt needs >= 1 token")
    longest = max(lens)
    if length is None:
        length = bucket_length(longest, minimum=minimum, multiple=multiple)
    elif length < longest:
        raise ValueError(f"length={length} is shorter than the longest prompt ({longest} tokens)")
    ids = np.full((len(prompts), length), pad_token_id, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for i, p in enumerate(prompts):
        ids[i, length - len(p) :] = np.asarray(p, np.int32)
        mask[i, length - len(p) :] = 1
    return ids, mask


# --------------------------------------------------------------------------- the rollout
def _is_stop(tokens: jax.Array, stop_ids: tuple[int, ...]) -> jax.Array:
    if not stop_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.any(tokens[..., None] == jnp.asarray(stop_ids, jnp.int32), axis=-1)


def _grow(a: jax.Array, axis: int, size: int) -> jax.Array:
    """Zero-pads `a` along `axis` to `size` entries."""
    widths = [(0, size - a.shape[axis] if i == axis else 0) for i in range(a.ndim)]
    return jnp.pad(a, widths)


def rollout(model, prompt_ids, prompt_mask, key, config: SamplingConfig) -> Rollout:
    """Pure (unjitted) rollout; see the module docstring. `generate` is the checked, jitted
    entry point; jit this one yourself to add in/out shardings."""
    c, sc = model.config, config
    B, P = prompt_ids.shape
    G, T = sc.group_size, sc.max_new_tokens
    N = B * G
    prompt_ids = prompt_ids.astype(jnp.int32)
    prompt_mask = prompt_mask.astype(jnp.int32)
    use_seen = sc.repetition_penalty != 1.0
    sample_opts = dict(
        temperature=sc.temperature,
        top_k=sc.top_k,
        top_p=sc.top_p,
        min_p=sc.min_p,
        rep_penalty=sc.repetition_penalty,
        min_new_tokens=sc.min_new_tokens,
        stop_token_ids=sc.stop_token_ids,
        greedy=sc.greedy,
    )

    # 1. prefill once per prompt
    cache = models.init_cache(c, B, P, sc.cache_dtype)
    attn = prompt_mask
    positions = models.positions_from_mask(prompt_mask)
    logits, cache = models.apply(
        model.params, c, prompt_ids, positions, attn, cache, jnp.zeros((), jnp.int32)
    )

    # 2. share across the group: row n = b*G + g
    def rep(x, axis=0):
        return jnp.repeat(x, G, axis=axis) if G > 1 else x

    cache = jax.tree.map(lambda a: rep(a, axis=1), cache)  # k/v [L,B,S,Hkv,D]
    # decode layout: per-layer weights and head-major [N,Hkv,S,D] cache buffers (no per-step
    # weight copies out of the stacked arrays, no cache transposes; see unstack_layers)
    cache = unstack_cache(cache)
    decode_params = unstack_layers(model.params)
    logits, attn = rep(logits[:, -1]), rep(attn)
    next_pos = rep(positions[:, -1] + 1)
    seen = None
    if use_seen:
        rows = jnp.arange(B)[:, None]
        seen0 = jnp.zeros((B, c.vocab_size), bool).at[rows, prompt_ids].max(prompt_mask > 0)
        seen = rep(seen0)

    def pick(logits, seen, done, step):
        """Chooses token `step` for every row; finished rows get the pad token."""
        z = lp.process(logits, step=step, seen=seen, **sample_opts)
        tok = lp.choose(z, jax.random.fold_in(key, step), sc.greedy)
        logp = lp.token_logprobs(logits, tok, sc.temperature)
        tok = jnp.where(done, sc.pad_token_id, tok)
        logp = jnp.where(done, 0.0, logp)
        if seen is not None:
            seen = seen.at[jnp.arange(N), tok].set(True)
        return tok, logp, seen, done | _is_stop(tok, sc.stop_token_ids)

    # 3. decode: token 0 from the prefill logits, then forward token t-1 and pick token t
    done0 = jnp.zeros((N,), bool)
    tok, logp, seen, done = pick(logits, seen, done0, jnp.zeros((), jnp.int32))
    tokens = jnp.full((N, T), sc.pad_token_id, jnp.int32).at[:, 0].set(tok)
    logps = jnp.zeros((N, T), jnp.float32).at[:, 0].set(logp)
    lengths = jnp.ones((N,), jnp.int32)

    def cond(s):
        return (s["t"] < T) & ~jnp.all(s["done"])

    def body(s):
        t = s["t"]
        slot = P + t - 1
        prev = lax.dynamic_slice_in_dim(s["tokens"], t - 1, 1, axis=1)  # [N,1]
        attn = lax.dynamic_update_slice_in_dim(s["attn"], jnp.ones((N, 1), jnp.int32), slot, 1)
        logits, cache = models.apply(
            decode_params, c, prev, s["pos"][:, None], attn, s["cache"], slot
        )
        tok, logp, seen, done = pick(logits[:, 0], s["seen"], s["done"], t)
        return dict(
            t=t + 1,
            cache=cache,
            attn=attn,
            pos=s["pos"] + 1,
            seen=seen,
            done=done,
            lengths=s["lengths"] + (~s["done"]).astype(jnp.int32),
            tokens=lax.dynamic_update_slice_in_dim(s["tokens"], tok[:, None], t, 1),
            logps=lax.dynamic_update_slice_in_dim(s["logps"], logp[:, None], t, 1),
        )

    state = dict(
        t=jnp.ones((), jnp.int32),
        cache=cache,
        attn=attn,
        pos=next_pos,
        seen=seen,
        done=done,
        lengths=lengths,
        tokens=tokens,
        logps=logps,
    )
    # decode in chunks: chunk [t0, t1) runs on a cache grown to the P + t1 - 1 slots it fills,
    # so early steps do not read (or mask) the empty tail of a P + T cache
    s = state
    for _, t1 in decode_chunks(T):
        slots = P + t1 - 1
        s = dict(
            s,
            attn=_grow(s["attn"], 1, slots),
            cache=jax.tree.map(lambda a, n=slots: _grow(a, 2, n), s["cache"]),
        )
        s = lax.while_loop(lambda s, t1=t1: cond(s) & (s["t"] < t1), body, s)
    mask = (jnp.arange(T)[None, :] < s["lengths"][:, None]).astype(jnp.int32)
    return Rollout(
        tokens=s["tokens"],
        mask=mask,
        lengths=s["lengths"],
        truncated=~s["done"],
        logprobs=s["logps"],
        prompt_ids=rep(prompt_ids),
        prompt_mask=rep(prompt_mask),
    )


def decode_chunks(T: int, min_chunk: int | None = None, max_chunks: int = 4) -> list:
    """Static [t0, t1) step ranges of the decode loop (steps 1 .. T-1): chunks of at least
    `min_chunk` (default `DECODE_CHUNK`) steps, at most `max_chunks` of them (each chunk is
    one compiled loop body: more chunks read fewer empty slots but compile longer)."""
    min_chunk = DECODE_CHUNK if min_chunk is None else min_chunk
    steps = T - 1
    if steps <= 0:
        return []
    size = max(min_chunk, -(-steps // max_chunks))
    return [(t0, min(t0 + size, T)) for t0 in range(1, T, size)]


_rollout_jit = jax.jit(rollout, static_argnames=("config",))


def generate(model, prompt_ids, prompt_mask, key, config: SamplingConfig) -> Rollout:
    """Samples `config.group_size` completions per left-padded prompt; see the module docstring.

    Args:
      model: `models.Model`.  prompt_ids, prompt_mask: [B,P] ints (left-padded; pad prompt
        lengths with `pad_prompts` / `bucket_length` so new lengths do not recompile).
      key: PRNG key (ignored by greedy decoding).  config: `SamplingConfig`.
    Returns: `Rollout` with N = B * group_size rows.
    """
    if not isinstance(config, SamplingConfig):
        raise TypeError(f"config must be a SamplingConfig, got {type(config).__name__}")
    ids, mask = jnp.asarray(prompt_ids), jnp.asarray(prompt_mask)
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(
            f"prompt_ids {ids.shape} and prompt_mask {mask.shape} must both be [B,P] "
            "(left-padded; see sampling.pad_prompts)"
        )
    if ids.shape[1] < 1 or ids.shape[0] < 1:
        raise ValueError(f"prompt_ids has an empty axis: shape {ids.shape}")
    vocab = model.config.vocab_size
    for field in ("stop_token_ids", "pad_token_id"):
        values = getattr(config, field)
        if any(v >= vocab for v in np.atleast_1d(values)):
            raise ValueError(f"SamplingConfig.{field}={values} outside the vocabulary ({vocab})")
    return _rollout_jit(model, ids, mask, key, config)


# --------------------------------------------------------------------------- text in, text out
def default_stop_token_ids(tokenizer, model_config=None) -> tuple[int, ...]:
    """EOS id(s) of the tokenizer (and model config) plus chat end-of-turn tokens it knows."""
    ids = []
    eos = getattr(tokenizer, "eos_token_id", None)
    ids.extend([eos] if isinstance(eos, int) else list(eos or ()))
    if model_config is not None:
        ids.extend(model_config.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.extend(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


def generate_text(
    model,
    tokenizer,
    conversations: Sequence[Sequence[dict]],
    *,
    max_new_tokens: int,
    greedy: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    key: jax.Array | None = None,
    chat_template_kwargs: dict | None = None,
) -> list[str]:
    """Chat completions as text: chat template (with generation prompt and the extra template
    variables `chat_template_kwargs`, e.g. ``{"enable_thinking": False}``), left-pad, generate
    (G = 1), decode without special tokens. Stops at EOS / end-of-turn
    (`default_stop_token_ids`). Sampling (greedy=False) needs an explicit PRNG `key`."""
    if key is None:
        if not greedy:
            raise ValueError("generate_text(greedy=False) needs key=jax.random.key(seed)")
        key = jax.random.key(0)
    prompts = [
        tokenizer.apply_chat_template(
            list(conv),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
            **(chat_template_kwargs or {}),
        )  # fmt: skip
        for conv in conversations
    ]
    stops = default_stop_token_ids(tokenizer, model.config)
    pad = tokenizer.pad_token_id
    pad = pad if pad is not None else (stops[0] if stops else 0)
    ids, mask = pad_prompts(prompts, pad)
    config = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        greedy=greedy,
        stop_token_ids=stops,
        pad_token_id=pad,
    )
    out = jax.device_get(generate(model, ids, mask, key, config))
    return decode(tokenizer, out.tokens, out.lengths)[: len(prompts)]


def decode(tokenizer, tokens, lengths, n: int | None = None) -> list[str]:
    """Completion texts of the first ``n`` (default all) rows of host arrays tokens [N,T]
    and lengths [N]: the tokens up to each row's length, special tokens dropped."""
    n = len(lengths) if n is None else n
    return [tokenizer.decode(tokens[i, : lengths[i]].tolist(), skip_special_tokens=True)
            for i in range(n)]  # fmt: skip


__all__ = [
    "END_OF_TURN_TOKENS",
    "Rollout",
    "SamplingConfig",
    "bucket_length",
    "decode",
    "decode_chunks",
    "default_stop_token_ids",
    "generate",
    "generate_text",
    "pad_prompts",
    "rollout",
]
