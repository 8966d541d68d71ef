"""Chunked, lm_head-fused log-probs at a real (Qwen3-sized) vocabulary vs the full logits:
values, entropies and gradients to fp32 rounding; the update and reference pass through them;
the compiled update's temp memory no longer holds [N,T,V]."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gbmpo_jax import models, policy
from gbmpo_jax.models import presets
from gbmpo_jax.rl import divergences as dv
from gbmpo_jax.rl import logprobs as lpm
from gbmpo_jax.rl import placement
from gbmpo_jax.rl import train_step as ts
from gbmpo_jax.rl.optim import Optimizer

QWEN3_VOCAB = 151_669
P, T, N = 3, 7, 4  # prompt, completion, rows

SHAPES = {  # real vocabulary, tiny trunk: tied (Qwen3-style) and untied (Qwen2-style) heads
    "tied": ("qwen3-tiny", dict(hidden_size=16, num_layers=1)),
    "untied": ("tiny", dict(hidden_size=16, num_layers=1)),
}


def _model(kind, vocab=QWEN3_VOCAB, seed=0):
    name, over = SHAPES[kind]
    mc = presets.model_config(name, vocab, **over)
    return mc, models.init_params(mc, jax.random.PRNGKey(seed))


def _batch(key, vocab=QWEN3_VOCAB, n=N):
    k1, k2, k3 = jax.random.split(key, 3)
    ids = jax.random.randint(k1, (n, P + T), 0, vocab)
    am = jnp.ones((n, P + T), jnp.int32).at[0, 0].set(0)  # one left-padded prompt
    cm = (jnp.arange(T)[None] < jax.random.randint(k2, (n,), 1, T + 1)[:, None]).astype(jnp.int32)
    am = am.at[:, P:].set(cm)
    adv = jax.random.normal(k3, (n,))
    return {"input_ids": ids, "attention_mask": am, "completion_mask": cm, "advantages": adv}


def test_split_head_is_a_plain_apply_fn():
    mc, params = _model("tied", vocab=97)
    apply_fn = policy.make_apply_fn(mc)
    assert isinstance(apply_fn, lpm.SplitHead)
    b = _batch(jax.random.PRNGKey(1), vocab=97)
    ids, am = b["input_ids"], b["attention_mask"]
    want = models.apply(params, mc, ids, models.positions_from_mask(am), am)[0]
    np.testing.assert_array_equal(apply_fn(params, ids, am), want)


# chunk tokens (N = 4 rows): 12 = 3 positions, not dividing T = 7 (padded); 1 < rows (one
# position per chunk); 10,000 >= N*T (a single chunk)
@pytest.mark.parametrize(
    "kind,chunk",
    [("tied", 12), ("untied", 1), pytest.param("untied", 10_000, marks=pytest.mark.slow)],
)
def test_chunked_equals_full_logits_values_entropy_and_gradient(kind, chunk):
    mc, params = _model(kind)
    apply_fn = policy.make_apply_fn(mc)
    b = _batch(jax.random.PRNGKey(2))
    ids, am = b["input_ids"], b["attention_mask"]
    w = jax.random.normal(jax.random.PRNGKey(3), (N, T))
    temp = 0.7

    def f(p, chunk_tokens):
        lp, ent = lpm.completion_logprobs(apply_fn, p, ids, am, T, temp, chunk_tokens)
        return jnp.sum(w * lp), (lp, ent)

    grad = jax.jit(jax.value_and_grad(f, has_aux=True), static_argnums=1)
    (s0, (lp0, ent0)), g0 = grad(params, 0)
    (s1, (lp1, ent1)), g1 = grad(params, chunk)
    assert lp0.shape == ent0.shape == (N, T)
    # logp, H ~ log(151669) ~ 12. Both are fp32 sums over 151,669 terms whose reduction
    # order XLA picks per shape: that alone moves them by a few ulps of 12 (~1e-6 each)
    np.testing.assert_allclose(lp1, lp0, rtol=1e-5, atol=0)
    np.testing.assert_allclose(ent1, ent0, rtol=1e-5, atol=0)
    np.testing.assert_allclose(s1, s0, rtol=1e-5)
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g0))
    for a, b_ in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(a, b_, rtol=1e-4, atol=1e-5 * scale)
    head = params["embed"] if kind == "tied" else params["lm_head"]
    g_head = g1["embed"] if kind == "tied" else g1["lm_head"]
    assert g_head.shape == head.shape and float(jnp.max(jnp.abs(g_head))) > 0


def test_head_is_rematerialised_only_when_the_sequence_takes_several_chunks():
    """One chunk (T <= chunk_tokens // N) is the whole [N,T,V] the bound allows: no
    checkpoint, so the backward does not run the head a second time."""
    mc, params = _model("untied", vocab=97)
    apply_fn = policy.make_apply_fn(mc)
    b = _batch(jax.random.PRNGKey(5), vocab=97)

    def jaxpr(chunk):
        f = lambda p: lpm.completion_logprobs(apply_fn, p, b["input_ids"],  # noqa: E731
                                              b["attention_mask"], T, 1.0, chunk)[0].sum()  # fmt: skip
        return str(jax.make_jaxpr(jax.grad(f))(params))

    several, one = jaxpr(N * 3), jaxpr(N * T)  # 3 chunks of 3 positions; one chunk of all 7
    assert "checkpoint" in several or "remat" in several
    assert "checkpoint" not in one and "remat" not in one


def test_chunked_matches_reference_numpy_logsoftmax():
    """Value check independent of `token_logprobs`: float64 numpy log-softmax of the head."""
    mc, params = _model("untied", vocab=1001)
    apply_fn = policy.make_apply_fn(mc)
    b = _batch(jax.random.PRNGKey(4), vocab=1001)
    ids, am = b["input_ids"], b["attention_mask"]
    lp, ent = lpm.completion_logprobs(apply_fn, params, ids, am, T, 1.3, chunk_tokens=8)
    z = np.asarray(apply_fn(params, ids, am), np.float64)[:, P - 1 : P - 1 + T] / 1.3
    logz = z - np.log(np.sum(np.exp(z - z.max(-1, keepdims=True)), -1, keepdims=True))
    logz -= z.max(-1, keepdims=True)
    want = np.take_along_axis(logz, np.asarray(ids[:, P:])[..., None], -1)[..., 0]
    np.testing.assert_allclose(lp, want, rtol=1e-5)
    np.testing.assert_allclose(ent, -np.sum(np.exp(logz) * logz, -1), rtol=1e-5)


def _objective(kind, chunk, t=T, vocab=QWEN3_VOCAB, **cfg_over):
    mc, params = _model(kind, vocab)
    cfg = ts.step_config(max_completion_length=t, logprob_chunk=chunk, **cfg_over)
    div = dv.get("kl")
    opt = Optimizer(optax.sgd(0.1), lambda step: jnp.float32(0.1))
    state = ts.init_state(params, opt, div.init_params(None), 0.5, cfg, divergence=div)
    return policy.make_apply_fn(mc), cfg, div, opt, state


@pytest.mark.parametrize("mu,micro", [(1, 1), pytest.param(2, 2, marks=pytest.mark.slow)])
def test_update_and_reference_pass_use_it_and_match_full_logits(mu, micro):
    """The training path (make_compute_logprobs + make_update, as train.py builds them) gives
    the same log-probs, metrics and new params with chunking (default) as with full logits."""
    assert ts.StepConfig().logprob_chunk == lpm.AUTO  # chunked by size is the default
    b = _batch(jax.random.PRNGKey(5))
    out = {}
    for chunk in (0, 12):  # 3 positions of 4 rows (6 of 2 with 2 micro-batches), padded
        apply_fn, cfg, div, opt, state = _objective("tied", chunk, mu=mu, micro_batches=micro)
        lp, rp, ent = ts.make_compute_logprobs(apply_fn, cfg)(
            state, b["input_ids"], b["attention_mask"], T
        )
        update = ts.make_update(apply_fn, div, opt, cfg)
        state, m = update(state, dict(b), jax.random.PRNGKey(0))
        state, m = update(state, dict(b), jax.random.PRNGKey(1))  # the policy has moved
        out[chunk] = (lp, rp, ent, state.params, m)
    (lp0, rp0, e0, p0, m0), (lp1, rp1, e1, p1, m1) = out[0], out[12]
    for a, c in ((lp1, lp0), (rp1, rp0), (e1, e0)):
        np.testing.assert_allclose(a, c, rtol=1e-5)
    for k in ("train/loss", "div/mean", "train/grad_norm", "train/entropy", "ratio/mean"):
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-4, atol=1e-7, err_msg=k)
    assert float(m0["div/mean"]) > 0  # the second update is off the reference
    jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6), p1, p0)


def _update_temp_bytes(chunk, n=8, t=32):
    apply_fn, cfg, div, opt, state = _objective("tied", chunk, t)
    ids = jax.ShapeDtypeStruct((n, P + t), jnp.int32)
    batch = {
        "input_ids": ids,
        "attention_mask": ids,
        "completion_mask": jax.ShapeDtypeStruct((n, t), jnp.int32),
        "advantages": jax.ShapeDtypeStruct((n,), jnp.float32),
    }
    update = ts.make_update(apply_fn, div, opt, cfg)
    compiled = update.lower(state, batch, jax.random.PRNGKey(0)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_compiled_update_does_not_hold_the_full_logits():
    n, t = 8, 32
    logits = n * t * QWEN3_VOCAB * 4  # one fp32 [N,T,V]: 39 MB
    full, chunked = _update_temp_bytes(0, n, t), _update_temp_bytes(32, n, t)
    # the naive update holds several [N,T,V] (logits, softmax, their cotangents); 32-token
    # chunks hold that for 1/8 of the tokens, plus the [V,E] head / embedding gradients
    assert full >= 2 * logits, (full, logits)
    assert chunked < full / 4, (chunked, full)


def test_sharded_chunked_update_and_reference_equal_one_device_full_logits():
    """On a (data 2, fsdp 2, tensor 2) mesh (vocab over `tensor`, rows over data x fsdp) the
    chunked passes equal the one-device full-logits passes. Vocabulary 151,936: the Qwen3
    checkpoints' embedding rows (151,669 is odd, so it would stay replicated)."""
    from gbmpo_jax.config import MeshCfg
    from gbmpo_jax.scale import mesh

    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    m = mesh.setup(MeshCfg(data=2, fsdp=2, tensor=2))
    b = _batch(jax.random.PRNGKey(6), n=8)
    ids, am = b["input_ids"], b["attention_mask"]
    want, got = {}, {}
    for chunk in (0, 12):  # 3 positions of the 4 rows of a micro-batch
        apply_fn, cfg, div, opt, state = _objective("untied", chunk, vocab=151_936, micro_batches=2)
        mc = presets.model_config(SHAPES["untied"][0], 151_936, **SHAPES["untied"][1])
        lp_fn = ts.make_compute_logprobs(apply_fn, cfg, jit=False)
        update = ts.make_update(apply_fn, div, opt, cfg, jit=False)
        if chunk == 0:  # one device, full logits
            want["lp"] = jax.jit(lp_fn, static_argnums=3)(state, ids, am, T)
            s, want["m"] = jax.jit(update)(state, dict(b), jax.random.PRNGKey(0))
            want["params"] = s.params
        else:
            st, sh = placement.shard_state(jax.device_get(state), mc, m)
            got["lp"] = mesh.jit_logprobs(lp_fn, sh, m)(st, ids, am, T)
            s, got["m"] = mesh.jit_update(update, sh, m)(st, dict(b), jax.random.PRNGKey(0))
            got["params"] = jax.device_get(s.params)
    for a, c in zip(got["lp"], want["lp"], strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-5)
    for k in ("train/loss", "train/grad_norm", "train/entropy"):
        np.testing.assert_allclose(got["m"][k], want["m"][k], rtol=1e-4, err_msg=k)
    jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6),
                 got["params"], want["params"])  # fmt: skip


def test_auto_chunk_size_follows_the_vocabulary():
    """-1 (auto) bounds one chunk's fp32 logits at LOGIT_CHUNK_BYTES: a toy vocabulary gets
    one chunk for any realistic batch, a real one gets chunks; explicit values pass through."""
    budget = lpm.LOGIT_CHUNK_BYTES
    assert lpm.chunk_tokens_for(-1, 49_152) == budget // (4 * 49_152) == 1365
    assert lpm.chunk_tokens_for(-1, QWEN3_VOCAB) == 442
    assert lpm.chunk_tokens_for(-1, 64) == budget // 256
    assert lpm.chunk_tokens_for(-1, 10**12) == 1  # never zero: zero would mean "no chunks"
    assert lpm.chunk_tokens_for(0, 49_152) == 0 and lpm.chunk_tokens_for(96, 49_152) == 96
    with pytest.raises(ValueError, match="logprob_chunk=-2 must be >= -1"):
        ts.step_config(logprob_chunk=-2)


def test_chunks_are_balanced_and_auto_matches_full_logits(monkeypatch):
    """Chunks split T into k near-equal parts: 7 positions at <= 3 per chunk are 3 chunks
    of 3 (2 padded), never more chunks than needed. Auto with a budget that forces
    chunking gives the full-logit values and gradients."""
    mc, params = _model("untied", vocab=97)
    apply_fn = policy.make_apply_fn(mc)
    b = _batch(jax.random.PRNGKey(6), vocab=97)
    seen = []
    head = apply_fn.head_fn

    def spy(p, h):
        seen.append(h.shape)
        return head(p, h)

    h = apply_fn.hidden_fn(params, b["input_ids"], b["attention_mask"])[:, P - 1 : P - 1 + T]
    y = b["input_ids"][:, P:]
    lpm.chunked_token_logprobs(spy, params, h, y, 1.0, N * 3)
    assert seen[-1][:2] == (N, 3)  # k = ceil(7 / 3) = 3 chunks of ceil(7 / 3) = 3
    seen.clear()
    lpm.chunked_token_logprobs(spy, params, h, y, 1.0, N * 6)
    assert seen[-1][:2] == (N, 4)  # k = 2 chunks of 4, not 6 + 1 padded to 12

    # auto: a budget of 2 positions' logits -> 4 chunks; compare with full logits
    from gbmpo_jax.scale import memory

    monkeypatch.setattr(memory, "LOGIT_CHUNK_BYTES", N * 2 * 97 * 4)

    def f(p, chunk):
        lp, _ = lpm.completion_logprobs(apply_fn, p, b["input_ids"], b["attention_mask"], T,
                                        1.0, chunk)  # fmt: skip
        return lp.sum(), lp

    auto = str(jax.make_jaxpr(jax.grad(lambda p: f(p, lpm.AUTO)[0]))(params))
    assert "checkpoint" in auto or "remat" in auto  # the small budget did chunk
    (s0, lp0), g0 = jax.value_and_grad(f, has_aux=True)(params, 0)
    seen.clear()
    (s1, lp1), g1 = jax.value_and_grad(lambda p: f(p, lpm.AUTO), has_aux=True)(params)
    np.testing.assert_allclose(lp1, lp0, rtol=1e-5, atol=1e-6)
    for a, b_ in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(a, b_, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature,dtype", [(1.0, jnp.float32), (1.3, jnp.float32),
                                               (0.7, jnp.bfloat16)])  # fmt: skip
def test_token_logprobs_custom_vjp_matches_autodiff_of_log_softmax(temperature, dtype):
    """The hand-written backward (dz = g (onehot - softmax)) against autodiff of the naive
    log_softmax + gather, with per-token cotangents of both signs; entropy values too."""
    kz, ky, kw = jax.random.split(jax.random.PRNGKey(7), 3)
    logits = (3 * jax.random.normal(kz, (2, 5, 301))).astype(dtype)
    y = jax.random.randint(ky, (2, 5), 0, 301)
    w = jax.random.normal(kw, (2, 5))

    def naive(z):
        logz = jax.nn.log_softmax(z.astype(jnp.float32) / temperature, axis=-1)
        lp = jnp.take_along_axis(logz, y[..., None], axis=-1)[..., 0]
        return lp, -jnp.sum(jnp.exp(logz) * logz, axis=-1)

    lp0, ent0 = naive(logits)
    lp1, ent1 = lpm.token_logprobs(logits, y, temperature)
    np.testing.assert_allclose(lp1, lp0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent1, ent0, rtol=1e-5, atol=1e-5)
    g0 = jax.grad(lambda z: jnp.sum(w * naive(z)[0]))(logits)
    g1 = jax.grad(lambda z: jnp.sum(w * lpm.token_logprobs(z, y, temperature)[0]))(logits)
    assert g1.dtype == logits.dtype
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(g1, np.float32), np.asarray(g0, np.float32),
                               rtol=tol, atol=tol)  # fmt: skip
    # the entropy is a metric: no gradient flows from it
    ge = jax.grad(lambda z: jnp.sum(lpm.token_logprobs(z, y, temperature)[1]))(logits)
    assert float(jnp.max(jnp.abs(ge.astype(jnp.float32)))) == 0.0
