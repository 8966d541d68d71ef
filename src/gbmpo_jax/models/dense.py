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
the gradient). Values
and gradients are the same dot products as ``jnp.einsum``'s, up to fp32 summation order.
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
