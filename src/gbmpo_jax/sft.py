"""Supervised warm-up: next-token cross-entropy on gold completions (tiny-model demos).

A randomly initialised model cannot earn any reward, so RL has nothing to reinforce. The CPU
demo first fits the task on demonstrations (`warmup.steps` AdamW updates, cosine schedule;
`supervised_warmup`, called by the run loop), then RL takes over from that policy, which also
becomes the frozen reference. Real checkpoints skip this (warmup.steps = 0). The warm-up is
resumable: a SIGTERM saves its state to `warmup_checkpoint/` (see `supervised_warmup`).

Loss: sum over completion tokens of -log softmax(logits)[target] / number of completion
tokens, on the same batch layout as the RL step (DESIGN.md: input_ids [N,P+T],
attention_mask [N,P+T], completion_mask [N,T]).
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gbmpo_jax import config as config_lib
from gbmpo_jax.rl import program
from gbmpo_jax.tasks import episodes
from gbmpo_jax.workdir import checkpoint

WARMUP_CKPT = "warmup_checkpoint"  # in the run directory, only while a warm-up is interrupted


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


# warmup.schedule: name -> (peak lr, steps) -> learning rate or optax schedule
SCHEDULES = {
    # linear ramp over the first 5% of steps, cosine decay to 10% of lr at the end
    "cosine": lambda lr, steps: optax.warmup_cosine_decay_schedule(
        0.0, lr, max(steps // 20, 1), max(steps, 2), end_value=0.1 * lr
    ),
    "constant": lambda lr, steps: lr,
}


def supervised_warmup(cfg, state, obj, task, tokenizer, log, *, workdir=None, preempted=None):
    """Supervised warm-up on gold completions; the result is also the frozen reference.

    With `workdir` the warm-up is resumable: on SIGTERM (`preempted.flag`) it saves its own
    state (parameters, Adam moments, the data-sampling RNG) to `workdir/warmup_checkpoint` and
    returns None; the next call continues from there bit-identically."""
    w = cfg.warmup
    lr = SCHEDULES[w.schedule](w.lr, w.steps)
    opt = optax.adamw(lr, weight_decay=w.weight_decay) if w.weight_decay else optax.adam(lr)
    params = state.params if obj.step_cfg.lora is None else state.frozen
    step_fn = make_sft_step(obj.apply_fn, opt)
    opt_state = opt.init(params)
    rng = np.random.default_rng(cfg.run.seed)
    first, saver = 0, None
    if workdir is not None:
        saver = checkpoint.Checkpointer(pathlib.Path(workdir) / WARMUP_CKPT, keep=1,
                                        async_save=False)  # fmt: skip
        first = saver.latest_good_step(log) or 0
        if first:
            checkpoint.check_compatible(saver.restore_meta(first)["config"], cfg)
            (params, opt_state), meta = saver.restore(first, (params, opt_state))
            rng.bit_generator.state = json.loads(meta["rng"])
            log(f"warm-up: resumed at step {first}/{w.steps}")
    try:
        for i in range(first, w.steps):
            batch = episodes.sft_batch(task, tokenizer, rng, w.batch_size,
                                       cfg.task.max_prompt_len)  # fmt: skip
            params, opt_state, loss = step_fn(params, opt_state, batch)
            if (i + 1) % max(w.steps // 5, 1) == 0:
                log(f"warm-up {i + 1}/{w.steps}: nll {float(loss):.3f}")
            if preempted is not None and preempted.flag and saver is not None and i + 1 < w.steps:
                meta = {"config": config_lib.to_dict(cfg), "step": i + 1,
                        "rng": json.dumps(rng.bit_generator.state)}  # fmt: skip
                saver.save(i + 1, (params, opt_state), meta, force=True)
                log(f"SIGTERM: saved warm-up step {i + 1}/{w.steps} in {saver.directory}; "
                    "exiting (rerun the same command to continue)")  # fmt: skip
                return None
    finally:
        if saver is not None:
            saver.close()
    return program.init_state(cfg, params, obj)
