"""The model's projections, ``y = x @ w``, with a backward that lays out its own operands.

Math (x [..., I], w [I, O], y [..., O]; rows R = prod(...)):

    y  = x w                      (float32 accumulation, cast to ``out_dtype``)
    dx = dy w^T                   [..., I]
    dw = x^T dy  = (dy^T x)^T     [I, O]: R-long contractions over the token rows

Why a custom VJP: both operands of the weight gradient hold the token rows as their leading
(row-major) axis, so one of them must be transposed before the matmul. XLA:CPU transposes the
one its layout pass picks, which for the MLP's gate / up projections is the cotangent
[R, F] rather than the input [R, E] (F = 2.75 E): a fused elementwise-plus-transpose copy of
F x R floats, two per layer, that measured ~16% of the update's time on the "23.6M" shape.
The lm_head is the extreme case (O = V = 49,152 for SmolLM2: each log-prob chunk's [R, V]
cotangent was copied transposed). `dense` transposes the smaller of x and dy explicitly, so
the copy is min(I, O) x R (plus, for a tied [V, E] embedding, one weight-sized transpose of
the gradient). Values and gradients are the same dot products as ``jnp.einsum``'s, up to
fp32 summation order.

`swiglu`, the gated MLP, keeps only its two projections' outputs for the backward and
recomputes the rest there; `after` is how a backward's recompute is kept in the backward on
XLA:CPU (see both docstrings).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def dense(x: jax.Array, w: jax.Array, out_dtype, transpose_w: bool = False) -> jax.Array:
    """``x [..., I] @ w [I, O] -> [..., O]`` in ``out_dtype``, accumulated in float32;
    ``transpose_w``: w is [O, I] (a tied embedding used as the lm_head)."""
    spec = "...i,oi->...o" if transpose_w else "...i,io->...o"
    return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32).astype(out_dtype)


def _fwd(x, w, out_dtype, transpose_w):
    return dense(x, w, out_dtype, transpose_w), (x, w)


def _bwd(out_dtype, transpose_w, res, dy):
    del out_dtype
    x, w = res
    f32 = jnp.float32
    spec = "...o,oi->...i" if transpose_w else "...o,io->...i"
    dx = jnp.einsum(spec, dy, w, preferred_element_type=f32).astype(x.dtype)
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    if x2.shape[1] <= dy2.shape[1]:  # transpose the narrower operand: x
        dw = jnp.dot(x2.T, dy2, preferred_element_type=f32)  # [I, O]
        dw = dw.T if transpose_w else dw
    else:  # dy
        dw = jnp.dot(dy2.T, x2, preferred_element_type=f32)  # [O, I]
        dw = dw if transpose_w else dw.T
    return dx, dw.astype(w.dtype)


dense.defvjp(_fwd, _bwd)


def after(ct: jax.Array) -> jax.Array:
    """A float32 zero that XLA cannot compute before the cotangent ``ct`` exists.

    Added to what a backward recomputes, it keeps XLA:CPU from hoisting the recompute into
    the forward (its scheduler does that: the recomputed values then live from the forward
    to the backward, as if saved). Optimization barriers would say this, but XLA:CPU drops
    them. ``x * 0`` is not folded for floats (NaN * 0 is NaN); a non-finite cotangent makes
    the gradient non-finite anyway."""
    return ct.reshape(-1)[0].astype(jnp.float32) * 0.0


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def swiglu(h: jax.Array, wg: jax.Array, wu: jax.Array, wd: jax.Array, dtype) -> jax.Array:
    """The gated MLP ``(silu(h wg) * (h wu)) wd`` -> [..., E] float32; g, u and the product
    in ``dtype``. h [..., E], wg / wu [E, F], wd [F, E].

    Its backward keeps only h, g = h wg and u = h wu from the forward and recomputes
    sigma(g), silu(g) and the product in one elementwise pass: autodiff kept sigma(g) and the
    product as well, two more [tokens, F] buffers per layer alive until the backward
    (F = 2.75 E: ~370 MB on the "23.6M" benchmark update). With s = sigma(g),
    m = g s u:  dm = dy wd^T,  dg = dm u s (1 + g (1 - s)),  du = dm g s."""
    return _swiglu_fwd(h, wg, wu, wd, dtype)[0]


def _swiglu_fwd(h, wg, wu, wd, dtype):
    g, u = dense(h, wg, dtype), dense(h, wu, dtype)
    return dense(jax.nn.silu(g) * u, wd, jnp.float32), (h, g, u, wg, wu, wd)


def _swiglu_bwd(dtype, res, dy):
    h, g, u, wg, wu, wd = res
    f32 = jnp.float32
    tie = after(dy)
    gf, uf = g.astype(f32) + tie, u.astype(f32)
    s = jax.nn.sigmoid(gf)
    m = (gf * s * uf).astype(dtype)
    _, down_vjp = jax.vjp(lambda m_, w_: dense(m_, w_, f32), m, wd)
    dm, dwd = down_vjp(dy)
    dm = dm.astype(f32)
    dg = (dm * uf * s * (1 + gf * (1 - s))).astype(dtype)
    du = (dm * gf * s).astype(dtype)
    _, up_vjp = jax.vjp(lambda h_, a, b: (dense(h_, a, dtype), dense(h_, b, dtype)), h, wg, wu)
    dh, dwg, dwu = up_vjp((dg, du))
    return dh, dwg, dwu, dwd


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)
