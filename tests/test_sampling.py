"""Rollout engine on a tiny random fp32 model: cache vs no-cache greedy, padding isolation,
log-prob parity with teacher forcing, allowed sets under top-k/top-p, stop tokens,
min_new_tokens, repetition penalty. One shared config per behaviour keeps compiles few."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbmpo_jax import models
from gbmpo_jax.sampler import sampling
from gbmpo_jax.sampler.sampling import SamplingConfig

T = 8
PROMPTS = [[3, 17, 22, 9, 41], [7], [12, 5, 33], [60, 2, 2, 8, 19, 50, 11]]


@pytest.fixture(scope="module")
def tiny():
    cfg = models.ModelConfig(
        model_type="qwen2",
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
    )
    model = models.init_model(cfg, jax.random.key(0))
    # Logits of std ~4 instead of ~0.1 from the N(0, 0.02) init: sampling far from uniform.
    params = dict(model.params, lm_head=model.params["lm_head"] * 40.0)
    return models.Model(cfg, params)


@pytest.fixture(scope="module")
def prompts():
    return sampling.pad_prompts(PROMPTS, pad_token_id=0, minimum=8)


def _teacher_logits(model, prompt_ids, prompt_mask, tokens, mask):
    """Logits [N,T,V] for completion tokens from one full forward without cache."""
    ids = np.concatenate([prompt_ids, tokens], 1)
    att = np.concatenate([prompt_mask, mask], 1)
    logits = np.asarray(models.forward(model, ids, att))
    P = prompt_ids.shape[1]
    return logits[:, P - 1 : P - 1 + tokens.shape[1]]


def _greedy_reference(model, prompt_ids, prompt_mask, steps, penalty=1.0):
    """Step-by-step argmax over full forwards (no cache); one [B,P+T] shape -> one compile."""
    B, P = prompt_ids.shape
    ids = np.concatenate([prompt_ids, np.zeros((B, steps), np.int32)], 1)
    att = np.concatenate([prompt_mask, np.zeros((B, steps), np.int32)], 1)
    for t in range(steps):
        logits = np.asarray(models.forward(model, ids, att))[:, P - 1 + t].astype(np.float64)
        if penalty != 1.0:
            for b in range(B):
                seen = np.unique(ids[b][att[b] > 0])
                z = logits[b, seen]
                logits[b, seen] = np.where(z < 0, z * penalty, z / penalty)
        ids[:, P + t] = logits.argmax(-1)
        att[:, P + t] = 1
    return ids[:, P:]


def test_greedy_with_cache_equals_full_forward_argmax(tiny, prompts):
    ids, mask = prompts
    out = sampling.generate(tiny, ids, mask, jax.random.key(0), SamplingConfig(T, greedy=True))
    ref = _greedy_reference(tiny, ids, mask, T)
    np.testing.assert_array_equal(out.tokens, ref)
    assert out.tokens.shape == (4, T) and bool(out.truncated.all())
    np.testing.assert_array_equal(out.lengths, T)
    np.testing.assert_array_equal(out.prompt_ids, ids)


def test_decode_chunks_cover_every_step_once():
    assert sampling.decode_chunks(1) == []
    assert sampling.decode_chunks(32) == [(1, 32)]
    assert sampling.decode_chunks(128) == [(1, 33), (33, 65), (65, 97), (97, 128)]
    assert sampling.decode_chunks(8, min_chunk=3) == [(1, 4), (4, 7), (7, 8)]
    for T in (2, 33, 200, 1000):
        chunks = sampling.decode_chunks(T)
        steps = [t for a, b in chunks for t in range(a, b)]
        assert steps == list(range(1, T)) and len(chunks) <= 4


def test_multi_chunk_decode_equals_full_forward_argmax(tiny, prompts, monkeypatch):
    """Several growing-cache chunks (3-step chunks for T = 8) give the reference tokens."""
    ids, mask = prompts
    monkeypatch.setattr(sampling, "DECODE_CHUNK", 3)
    roll = jax.jit(sampling.rollout, static_argnames=("config",))  # fresh trace cache
    out = roll(tiny, ids, mask, jax.random.key(0), SamplingConfig(T, greedy=True, group_size=2))
    ref = _greedy_reference(tiny, ids, mask, T)
    np.testing.assert_array_equal(out.tokens, np.repeat(ref, 2, axis=0))


def test_greedy_batch_equals_each_prompt_alone(tiny, prompts):
    ids, mask = prompts
    cfg = SamplingConfig(T, greedy=True)
    batch = sampling.generate(tiny, ids, mask, jax.random.key(0), cfg)
    for i in (0, 3):  # alone and unpadded (different shapes from the batch)
        alone = sampling.generate(
            tiny, np.asarray([PROMPTS[i]]), np.ones((1, len(PROMPTS[i]))), jax.random.key(0), cfg
        )
        np.testing.assert_array_equal(alone.tokens[0], batch.tokens[i])
        np.testing.assert_allclose(alone.logprobs[0], batch.logprobs[i], atol=1e-5)


def test_repetition_penalty_greedy_matches_reference(tiny, prompts):
    ids, mask = prompts
    cfg = SamplingConfig(T, greedy=True, repetition_penalty=1.8)
    out = sampling.generate(tiny, ids, mask, jax.random.key(0), cfg)
    ref = _greedy_reference(tiny, ids, mask, T, penalty=1.8)
    np.testing.assert_array_equal(out.tokens, ref)
    plain = _greedy_reference(tiny, ids, mask, T)
    assert (ref != plain).any(), "penalty too weak to change anything: test has no power"


@pytest.fixture(scope="module")
def sampled(tiny, prompts):
    ids, mask = prompts
    cfg = SamplingConfig(T, group_size=3, temperature=0.7, top_k=6, top_p=0.9)
    out = jax.device_get(sampling.generate(tiny, ids, mask, jax.random.key(7), cfg))
    return cfg, out


def test_logprobs_match_teacher_forced_forward(tiny, sampled):
    cfg, out = sampled
    logits = _teacher_logits(tiny, out.prompt_ids, out.prompt_mask, out.tokens, out.mask)
    ref = np.asarray(jax.nn.log_softmax(jnp.asarray(logits) / cfg.temperature, axis=-1))
    ref = np.take_along_axis(ref, out.tokens[..., None], -1)[..., 0] * out.mask
    assert np.abs(out.logprobs - ref).max() <= 1e-4
    assert (out.logprobs[out.mask == 1] < 0).all()


def test_top_k_top_p_never_emit_outside_the_allowed_set(tiny, sampled):
    cfg, out = sampled
    logits = _teacher_logits(tiny, out.prompt_ids, out.prompt_mask, out.tokens, out.mask)
    z = logits.astype(np.float64) / cfg.temperature
    order = np.argsort(-z, axis=-1)
    rank = np.argsort(order, axis=-1)
    tok_rank = np.take_along_axis(rank, out.tokens[..., None], -1)[..., 0]
    assert (tok_rank[out.mask == 1] < cfg.top_k).all()
    # top-p on the top-k renormalised distribution: mass strictly above the token < p
    top = np.take_along_axis(z, order[..., : cfg.top_k], -1)
    p = np.exp(top - top.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    before = np.cumsum(p, -1) - p
    tok_before = np.take_along_axis(before, np.minimum(tok_rank, cfg.top_k - 1)[..., None], -1)
    assert (tok_before[..., 0][out.mask == 1] < cfg.top_p + 1e-6).all()
    # G samples of a prompt differ (shared cache, independent draws)
    assert (out.tokens[0] != out.tokens[1]).any() or (out.tokens[1] != out.tokens[2]).any()


def test_stop_tokens_end_rows_and_min_new_tokens(tiny, prompts):
    ids, mask = prompts
    free = jax.device_get(
        sampling.generate(tiny, ids, mask, jax.random.key(0), SamplingConfig(T, greedy=True))
    )
    stop = int(free.tokens[0, 2])  # row 0 emits it at step 2 (or earlier)
    cfg = SamplingConfig(T, greedy=True, stop_token_ids=(stop,), pad_token_id=1)
    out = jax.device_get(sampling.generate(tiny, ids, mask, jax.random.key(0), cfg))
    for n in range(len(PROMPTS)):
        hits = np.flatnonzero(free.tokens[n] == stop)
        length = int(hits[0]) + 1 if hits.size else T
        assert out.lengths[n] == length and out.truncated[n] == (hits.size == 0)
        np.testing.assert_array_equal(out.tokens[n, :length], free.tokens[n, :length])
        assert (out.tokens[n, length:] == 1).all()
        np.testing.assert_array_equal(out.mask[n], np.arange(T) < length)
        assert (out.logprobs[n, length:] == 0).all()
    assert out.lengths[0] <= 3

    cfg_min = SamplingConfig(
        T, greedy=True, stop_token_ids=(stop,), pad_token_id=1, min_new_tokens=4
    )
    late = jax.device_get(sampling.generate(tiny, ids, mask, jax.random.key(0), cfg_min))
    assert (late.tokens[:, :4] != stop).all()
    assert ((late.lengths >= 5) | late.truncated).all()


def test_every_row_stopping_at_its_first_token(tiny, prompts):
    """Every first token is a stop token: the loop exits at once, all rows have length 1."""
    ids, mask = prompts
    free = jax.device_get(
        sampling.generate(tiny, ids, mask, jax.random.key(0), SamplingConfig(T, greedy=True))
    )
    cfg = SamplingConfig(T, greedy=True, stop_token_ids=tuple(int(t) for t in free.tokens[:, 0]))
    out = jax.device_get(sampling.generate(tiny, ids, mask, jax.random.key(0), cfg))
    np.testing.assert_array_equal(out.lengths, 1)
    assert not out.truncated.any() and (out.tokens[:, 1:] == 0).all()


def test_generate_rejects_bad_inputs(tiny, prompts):
    ids, mask = prompts
    with pytest.raises(ValueError, match="prompt_mask"):
        sampling.generate(tiny, ids, mask[:, 1:], jax.random.key(0), SamplingConfig(T))
    with pytest.raises(ValueError, match="stop_token_ids"):
        sampling.generate(
            tiny, ids, mask, jax.random.key(0), SamplingConfig(T, stop_token_ids=(64,))
        )
    with pytest.raises(TypeError, match="SamplingConfig"):
        sampling.generate(tiny, ids, mask, jax.random.key(0), {"max_new_tokens": T})
