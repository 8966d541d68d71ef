"""Supervised warm-up: next-token cross-entropy on gold completions (tiny-model demos).

A randomly initialised model cannot earn any reward, so RL has nothing to reinforce. The CPU
demo first fits the task on demonstrations (`warmup.steps` AdamW updates, cosine schedule;
`train.supervised_warmup`), then RL takes over from that policy, which also becomes the
frozen reference. Real checkpoints skip this (warmup.steps = 0).

Loss: sum over completion tokens of -log softmax(logits)[target] / number of completion
tokens, on the same batch layout as the RL step (DESIGN.md: input_ids [N,P+T],
attention_mask [N,P+T], completion_mask [N,T]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def completion_nll(apply_fn, params, batch) -> jax.Array:
    ids, mask, cmask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    t = cmask.shape[1]
    logits = apply_fn(params, ids, mask)[:, -t - 1 : -1].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok_logp = jnp.take_along_axis(logp, ids[:, -t:, None], axis=-1)[..., 0]
    cm = cmask.astype(jnp.float32)
    return -(tok_logp * cm).sum() / jnp.maximum(cm.sum(), 1.0)


def make_sft_step(apply_fn, optimizer: optax.GradientTransformation):
    """Returns a jitted `step(params, opt_state, batch) -> (params, opt_state, loss)`."""

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: completion_nll(apply_fn, p, batch))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))
