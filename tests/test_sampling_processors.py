"""Logit processors and SamplingConfig: hand-derived values, transformers parity, chi-square
frequency tests of the sampling distribution on a tiny vocabulary (no model needed)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbmpo_jax.sampler import logit_processors as lp
from gbmpo_jax.sampler.sampling import SamplingConfig, bucket_length, pad_prompts

V = 8
LOGITS = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], np.float32)


def _opts(**kw):
    base = dict(
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_p=0.0,
        rep_penalty=1.0,
        min_new_tokens=0,
        stop_token_ids=(),
        greedy=False,
    )
    base.update(kw)
    return base


def _target(logits, temperature=1.0, keep=None):
    """Reference distribution by hand: softmax(logits / T) restricted to `keep`, renormalised."""
    z = np.asarray(logits, np.float64) / temperature
    p = np.exp(z - z.max())
    if keep is not None:
        mask = np.zeros_like(p, bool)
        mask[list(keep)] = True
        p = np.where(mask, p, 0.0)
    return p / p.sum()


def _chi2_critical(df, z=3.719):
    """Upper quantile of chi^2(df) via Wilson-Hilferty; z=3.719 is the 1e-4 normal quantile."""
    a = 2.0 / (9.0 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


# ------------------------------------------------------------------------- config & prompts
@pytest.mark.parametrize(
    "field,value",
    [
        ("max_new_tokens", 0),
        ("group_size", 0),
        ("temperature", 0.0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("min_p", 1.0),
        ("repetition_penalty", 0.0),
        ("min_new_tokens", 9),
        ("pad_token_id", -1),
        ("stop_token_ids", 2),
        ("max_new_tokens", 4.0),
        ("cache_dtype", "float16"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    kw = {"max_new_tokens": 8, field: value}
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**kw)


def test_config_is_hashable_and_normalised():
    a = SamplingConfig(max_new_tokens=4, stop_token_ids=[2, 3, 2], cache_dtype="bf16")
    b = SamplingConfig(max_new_tokens=4, stop_token_ids=(2, 3), cache_dtype="bfloat16")
    assert a == b and hash(a) == hash(b)
    assert a.stop_token_ids == (2, 3)


def test_bucket_length_few_sizes():
    assert [bucket_length(n) for n in (1, 16, 17, 33, 64, 65, 130)] == [
        16,
        16,
        32,
        64,
        64,
        128,
        192,
    ]
    assert len({bucket_length(n) for n in range(1, 513)}) == 10  # 16, 32, 64, 128, 192, ..., 512
    with pytest.raises(ValueError):
        bucket_length(0)


def test_pad_prompts_left_pads():
    ids, mask = pad_prompts([[5, 6, 7], [9]], pad_token_id=0, minimum=4)
    np.testing.assert_array_equal(ids, [[0, 5, 6, 7], [0, 0, 0, 9]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])
    with pytest.raises(ValueError, match="empty"):
        pad_prompts([[1], []], 0)
    with pytest.raises(ValueError, match="shorter"):
        pad_prompts([[1, 2, 3]], 0, length=2)


# ------------------------------------------------------------------------- processors by hand
def test_repetition_penalty_divides_positive_multiplies_negative():
    logits = jnp.array([[2.0, -2.0, 1.0, -1.0]])
    seen = jnp.array([[True, True, False, False]])
    out = lp.repetition_penalty(logits, seen, 2.0)
    np.testing.assert_allclose(out, [[1.0, -4.0, 1.0, -1.0]])


def test_top_k_top_p_min_p_keep_the_hand_derived_sets():
    x = jnp.asarray(LOGITS)[None]
    assert np.isfinite(lp.top_k_filter(x, 3)).sum() == 3
    probs = _target(LOGITS)
    # smallest prefix with mass >= p: first k with cumsum >= p
    for p in (0.3, 0.5, 0.8, 0.95):
        n_keep = int(np.searchsorted(np.cumsum(probs), p) + 1)
        kept = np.isfinite(np.asarray(lp.top_p_filter(x, p)))[0]
        assert kept.sum() == n_keep and kept[:n_keep].all(), p
    kept = np.isfinite(np.asarray(lp.min_p_filter(x, 0.3)))[0]
    np.testing.assert_array_equal(kept, probs >= 0.3 * probs.max())


def test_min_new_tokens_bans_stop_tokens_only_before_the_step():
    x = jnp.asarray(LOGITS)[None]
    early = lp.process(
        x, step=jnp.int32(1), seen=None, **_opts(min_new_tokens=2, stop_token_ids=(0, 3))
    )
    late = lp.process(
        x, step=jnp.int32(2), seen=None, **_opts(min_new_tokens=2, stop_token_ids=(0, 3))
    )
    assert np.isneginf(early[0, [0, 3]]).all() and np.isfinite(early[0, [1, 2, 4]]).all()
    np.testing.assert_allclose(late, x)


def test_process_matches_transformers_logits_processors():
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 50)).astype(np.float32) * 3
    history = rng.integers(0, 50, size=(6, 12))
    seen = np.zeros((6, 50), bool)
    np.put_along_axis(seen, history, True, axis=1)
    for temp, k, p, mp, rep in [
        (0.7, 10, 0.9, 0.0, 1.3),
        (1.3, 0, 0.6, 0.0, 1.0),
        (1.0, 0, 1.0, 0.1, 0.8),
    ]:
        procs = [RepetitionPenaltyLogitsProcessor(rep)] if rep != 1.0 else []
        procs.append(TemperatureLogitsWarper(temp))
        if k:
            procs.append(TopKLogitsWarper(k))
        if p < 1:
            procs.append(TopPLogitsWarper(p))
        if mp:
            procs.append(MinPLogitsWarper(mp))
        ref = LogitsProcessorList(procs)(torch.tensor(history), torch.tensor(logits)).numpy()
        ours = lp.process(
            jnp.asarray(logits),
            step=jnp.int32(0),
            seen=jnp.asarray(seen),
            **_opts(temperature=temp, top_k=k, top_p=p, min_p=mp, rep_penalty=rep),
        )
        ours = np.asarray(ours)
        np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
        fin = np.isfinite(ref)
        np.testing.assert_allclose(ours[fin], ref[fin], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- sampled frequencies
@jax.jit
def _draw_many(key):
    """Draws 40,000 tokens for each setting (one jit; settings are static inside)."""
    x = jnp.broadcast_to(jnp.asarray(LOGITS), (40_000, V))
    out = {}
    settings = {
        "plain_t0.7": _opts(temperature=0.7),
        "top_k3": _opts(top_k=3),
        "top_p0.8_t1.5": _opts(temperature=1.5, top_p=0.8),
        "min_p0.2": _opts(min_p=0.2),
        "top_k5_top_p0.9": _opts(top_k=5, top_p=0.9),
    }
    for i, (name, opts) in enumerate(settings.items()):
        z = lp.process(x, step=jnp.int32(0), seen=None, **opts)
        out[name] = lp.choose(z, jax.random.fold_in(key, i), greedy=False)
    return out


def _expected(name):
    probs = _target(LOGITS)
    if name == "plain_t0.7":
        return _target(LOGITS, 0.7)
    if name == "top_k3":
        return _target(LOGITS, keep=range(3))
    if name == "top_p0.8_t1.5":
        p15 = _target(LOGITS, 1.5)
        n_keep = int(np.searchsorted(np.cumsum(p15), 0.8) + 1)
        return _target(LOGITS, 1.5, keep=range(n_keep))
    if name == "min_p0.2":
        return _target(LOGITS, keep=np.flatnonzero(probs >= 0.2 * probs.max()))
    if name == "top_k5_top_p0.9":
        p5 = _target(LOGITS, keep=range(5))
        n_keep = int(np.searchsorted(np.cumsum(p5), 0.9) + 1)
        return _target(LOGITS, keep=range(n_keep))
    raise KeyError(name)


def test_sampled_frequencies_match_target_distribution_chi_square():
    draws = jax.device_get(_draw_many(jax.random.key(1234)))
    for name, toks in draws.items():
        target = _expected(name)
        counts = np.bincount(toks, minlength=V)
        support = target > 0
        assert counts[~support].sum() == 0, f"{name}: token outside the allowed set"
        n = counts.sum()
        expected = n * target[support]
        chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
        df = int(support.sum()) - 1
        if df == 0:
            continue
        assert chi2 < _chi2_critical(df), f"{name}: chi2={chi2:.1f} df={df}"


def test_chi_square_detects_a_wrong_temperature():
    """The frequency test has power: draws at T=0.7 fail against the T=1 target."""
    toks = jax.device_get(_draw_many(jax.random.key(1234)))["plain_t0.7"]
    counts = np.bincount(toks, minlength=V)
    expected = counts.sum() * _target(LOGITS, 1.0)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 > _chi2_critical(V - 1)


@pytest.mark.parametrize("block", [1, 3, 8, 256])
def test_two_level_sampler_frequencies_across_blocks(block):
    """Inverse-CDF sampler over several blocks (and a padded last block) matches the target;
    zero-probability tokens never appear, also at block edges."""
    probs = np.array([0.1, 0.0, 0.2, 0.3, 0.05, 0.0, 0.35, 0.0, 0.0, 0.0], np.float64)
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (50_000, probs.size))
    draw = jax.jit(lp.sample_categorical, static_argnums=2)
    toks = np.asarray(draw(jax.random.key(block), logits, block))
    counts = np.bincount(toks, minlength=probs.size)
    assert counts[probs == 0].sum() == 0
    expected = counts.sum() * probs[probs > 0]
    chi2 = float(((counts[probs > 0] - expected) ** 2 / expected).sum())
    assert chi2 < _chi2_critical(int((probs > 0).sum()) - 1)


def test_two_level_sampler_one_hot_and_tiny_mass():
    logits = jnp.full((1000, 40), -jnp.inf).at[:, 37].set(0.0)
    toks = np.asarray(lp.sample_categorical(jax.random.key(0), logits, 16))
    assert (toks == 37).all()
    # a token 1e-30 times less likely than the rest is (practically) never drawn
    logits = jnp.zeros((1000, 40)).at[:, 5].set(-69.0)
    toks = np.asarray(lp.sample_categorical(jax.random.key(1), logits, 16))
    assert (toks != 5).all() and len(np.unique(toks)) == 39
