"""The model's hand-written backwards (models/dense.py `swiglu`, models/transformer.py
`_attend`) against autodiff of the plain formulas: values and gradients, float32 and
bfloat16, grouped-query heads and query rows with no allowed key; and what they are for, the
compiled update keeping fewer buffers alive."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbmpo_jax.models import transformer
from gbmpo_jax.models.dense import after, swiglu

# bfloat16: the hand-written backwards compute in float32 and round once, autodiff rounds
# each elementwise step, so results differ by a few bf16 ulps of the largest entries
TOL = {"float32": (1e-5, 1e-5), "bfloat16": (3e-2, 2e-2)}  # (rtol, atol / max |want|)


def _close(got, want, dtype):
    rtol, atol = TOL[dtype]
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        b = np.asarray(b, np.float32)
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=rtol,
                                   atol=atol * max(1.0, float(np.abs(b).max())))  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_swiglu_matches_autodiff(dtype):
    dt = jnp.dtype(dtype)
    kh, kg, ku, kd, ky = jax.random.split(jax.random.key(0), 5)
    h = jax.random.normal(kh, (2, 5, 8)).astype(dt)
    wg, wu = (0.5 * jax.random.normal(kg, (8, 12))).astype(dt), jax.random.normal(ku, (8, 12))
    wu, wd = wu.astype(dt), (0.5 * jax.random.normal(kd, (12, 8))).astype(dt)
    dy = jax.random.normal(ky, (2, 5, 8))

    def plain(h, wg, wu, wd):
        g = jnp.einsum("bte,ef->btf", h, wg, preferred_element_type=jnp.float32).astype(dt)
        u = jnp.einsum("bte,ef->btf", h, wu, preferred_element_type=jnp.float32).astype(dt)
        m = jax.nn.silu(g) * u
        return jnp.einsum("btf,fe->bte", m, wd, preferred_element_type=jnp.float32)

    args = (h, wg, wu, wd)
    _close([swiglu(*args, dt)], [plain(*args)], dtype)
    want = jax.grad(lambda *a: jnp.sum(plain(*a) * dy), argnums=(0, 1, 2, 3))(*args)
    got = jax.grad(lambda *a: jnp.sum(swiglu(*a, dt) * dy), argnums=(0, 1, 2, 3))(*args)
    _close(got, want, dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_attention_matches_autodiff(dtype):
    """GQA (4 query heads on 2 kv heads), keys beyond the queries (a shared prefix), a left-
    padded row whose first query sees no key (uniform softmax, as the forward promises)."""
    dt = jnp.dtype(dtype)
    B, T, S, H, K, D = 2, 3, 5, 4, 2, 8
    kq, kk, kv, ko = jax.random.split(jax.random.key(1), 4)
    q = jax.random.normal(kq, (B, T, H, D)).astype(dt)
    k = jax.random.normal(kk, (B, K, S, D)).astype(dt)
    v = jax.random.normal(kv, (B, K, S, D)).astype(dt)
    mask = jnp.array([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    bias = transformer._bias(mask, jnp.int32(2), T)  # queries at slots 2..4
    bias = bias.at[1, 0].set(-1e30)  # row 1's first query: no allowed key at all
    do = jax.random.normal(ko, (B, T, H * D))

    def plain(q, k, v):  # in float32 from the rounded inputs (XLA:CPU has no bf16 5-d dot)
        f32 = jnp.float32
        qq = q.reshape(B, T, K, H // K, D).astype(f32)
        s = jnp.einsum("btkgd,bksd->bkgts", qq, k.astype(f32))
        p = jax.nn.softmax(s + bias[:, None, None], axis=-1).astype(dt).astype(f32)
        o = jnp.einsum("bkgts,bksd->btkgd", p, v.astype(f32))
        return o.astype(dt).reshape(B, T, H * D)

    out = transformer._attention(q, k, v, bias, dt)
    _close([out], [plain(q, k, v)], dtype)
    f = lambda fn: lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * do)  # noqa: E731
    want = jax.grad(f(plain), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(f(lambda *a: transformer._attention(*a, bias, dt)), argnums=(0, 1, 2))(q, k, v)
    _close(got, want, dtype)


def test_after_is_a_zero_that_waits_for_its_argument():
    x = jnp.arange(6.0).reshape(2, 3)
    assert float(after(x)) == 0.0 and after(x).dtype == jnp.float32
    assert "mul" in str(jax.make_jaxpr(after)(x))  # a real dependence, not a constant
