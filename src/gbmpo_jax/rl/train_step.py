"""The jitted GBMPO update: ``update(state, batch, key) -> (state, metrics)`` (arXiv 2602.04380).

Built by ``make_update(apply_fn, divergence, optimizer, cfg)``; the model enters only through
``apply_fn(params, input_ids [N,P+T], attention_mask [N,P+T]) -> logits [N,P+T,V]``. Batch
(DESIGN.md): input_ids, attention_mask, completion_mask [N,T], advantages [N], and optionally
old_logp / ref_logp [N,T] (computed here from the state when absent: old = policy at the start
of the update - with ``mu == 1`` taken from the update's own forward, `on_policy` - and
ref = ``state.frozen``), truncated [N] (bool), num_items_in_batch (dapo; default: the loss
tokens of this whole update batch, i.e. of the generation batch one optimizer step sees).
Log-probs: logits at positions P-1 .. P+T-2 divided by the temperature, float32. A
`logprobs.SplitHead` apply_fn (the built-in transformer's, `policy.make_apply_fn`) gets them
in chunks of ``logprob_chunk`` tokens fused with the lm_head, never holding the [N,T,V] logits
(`logprobs.chunked_token_logprobs`; equal to the full-logits path up to fp32 rounding).

Shared prompts: with ``StepConfig.shared_prompts`` (the step program sets it: its batches are
rollouts, row b*G + g holding prompt b) both passes run each prompt once per group
(`logprobs.completion_logprobs`, ``group = G``) whenever a micro-batch holds whole groups;
otherwise, and by default, every row runs its whole sequence. The numbers are the same.

One update = ``mu`` optimizer steps on the same batch (stored old log-probs). Each step
splits the N rows into ``micro_batches`` equal slices, scans over them accumulating the
*sums* sum W l and their gradients (W from `losses.token_weights` on the whole batch), so the
objective does not depend on the split. A step whose loss or gradient is non-finite is
skipped (params / opt state unchanged via ``jnp.where``) and counted; `check_skips` stops
the host loop after ``max_in_row`` consecutive skips.

Reference policy: ``state.frozen`` = a copy of the initial params (full fine-tuning) or the
LoRA base weights (adapters off). Never the current policy.

Mixed precision: the trainable params (full fine-tuning: a float32 copy of the weights; LoRA:
the adapters) and the optimizer state are float32 master weights whatever the model's
parameter dtype; the frozen reference / LoRA base stays in that dtype (e.g. bfloat16) and the
model casts its weights to ``compute_dtype`` for the matmuls. (bf16 weights updated in place
lose most AdamW steps at lr 1e-5: the update is below half a bf16 ulp of the weight.)

Deliberate deviations from TRL: 1. the micro-batch split never changes the objective (see
`losses`); 2. ``key`` is accepted for stochastic objectives but unused by the current ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from gbmpo_jax.rl import lora as lora_lib
from gbmpo_jax.rl.divergences import Divergence
from gbmpo_jax.rl.logprobs import completion_logprobs, token_logprobs  # noqa: F401 (re-export)
from gbmpo_jax.rl.losses import ObjectiveConfig, loss_fn, loss_mask, token_weights
from gbmpo_jax.rl.optim import Optimizer
from gbmpo_jax.sampler.sampling import SamplingConfig


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The update's static settings: the run config's own sections, referenced, not copied
    (objective: loss, mu, micro-batches, log-prob chunk; rollout: G and the temperature the
    log-probs are taken at; lora: adapters or None for full fine-tuning)."""

    objective: ObjectiveConfig = ObjectiveConfig()
    rollout: SamplingConfig = SamplingConfig(group_size=4)
    lora: lora_lib.LoraConfig | None = None
    # the batch layout of a rollout: rows g*G .. g*G+G-1 share their prompt columns, so the
    # log-prob passes run each prompt once per group (`logprobs.completion_logprobs`); set
    # by the step program, whose batches always have it. Off: any rows (exact either way).
    shared_prompts: bool = False

    def __post_init__(self):
        if self.rollout.group_size < 2:
            raise ValueError(f"group_size={self.rollout.group_size} must be >= 2 (group-relative "
                             "advantages)")  # fmt: skip
        if self.lora is not None and not self.lora.enabled:
            raise ValueError("lora has rank 0: pass lora=None for full fine-tuning")

    # the names the update reads
    loss = property(lambda self: self.objective)
    group_size = property(lambda self: self.rollout.group_size)
    temperature = property(lambda self: self.rollout.temperature)
    mu = property(lambda self: self.objective.mu)
    micro_batches = property(lambda self: self.objective.micro_batches)
    logprob_chunk = property(lambda self: self.objective.logprob_chunk)


def step_config(*, group_size: int = 4, temperature: float = 1.0,
                lora: lora_lib.LoraConfig | None = None, **objective) -> StepConfig:  # fmt: skip
    """A StepConfig for using the update on its own (a user's loop, tests, benchmarks):
    `losses.ObjectiveConfig` fields by name, plus G, the sampling temperature and LoRA."""
    return StepConfig(ObjectiveConfig(**objective),
                      SamplingConfig(group_size=group_size, temperature=temperature), lora)  # fmt: skip


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    step: jax.Array  # applied optimizer steps (int32)
    params: Any  # trainable: full params or LoRA adapters
    opt_state: Any
    frozen: Any  # reference params: initial copy, or LoRA base weights
    div_params: Any  # divergence parameters (traced; vmappable by ES)
    div_coef: jax.Array  # lambda (float32, traced)
    skipped_in_row: jax.Array  # consecutive skipped steps (int32)
    skipped_total: jax.Array  # all skipped steps (int32)


def init_state(
    params,
    optimizer: Optimizer,
    div_params,
    div_coef,
    cfg: StepConfig,
    key=None,
    divergence: Divergence | None = None,
):
    """Initial state. Full fine-tuning trains a float32 copy of ``params`` (master weights)
    and keeps ``params`` as they are (e.g. bfloat16) in ``frozen`` (the reference); with
    ``cfg.lora`` the params become the frozen base and fresh float32 adapters are trained.
    Given ``divergence``, its params are validated here (host side, once)."""
    if divergence is not None:
        divergence.validate(div_params)
    coef = float(div_coef)
    if not coef >= 0 or coef == float("inf"):
        raise ValueError(f"divergence coefficient {div_coef} must be finite and >= 0")
    if cfg.lora is not None:
        if key is None:
            raise ValueError("init_state with LoRA needs a PRNG key for the adapter init")
        frozen, trainable = params, lora_lib.init(key, params, cfg.lora)
    else:
        frozen, trainable = jax.tree.map(jnp.copy, params), master_weights(params)
    i32 = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
    return TrainState(
        step=i32(0),
        params=trainable,
        opt_state=optimizer.tx.init(trainable),
        frozen=frozen,
        div_params=div_params,
        div_coef=jnp.asarray(div_coef, jnp.float32),
        skipped_in_row=i32(0),
        skipped_total=i32(0),
    )


def master_weights(params):
    """float32 copies of floating-point leaves (the trainable master weights)."""
    f32 = lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x  # noqa: E731
    return jax.tree.map(f32, params)


def policy_params(trainable, frozen, cfg: StepConfig, dtype=None):
    """The policy's weights: the trainable params, or the LoRA base with the adapters merged.
    ``dtype`` (e.g. the model's "bfloat16") casts them for the sampler, which then reads
    half the bytes per decode step; the update differentiates the float32 master weights."""
    out = lora_lib.merge(frozen, trainable, cfg.lora) if cfg.lora is not None else trainable
    if dtype is None:
        return out
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                        out)  # fmt: skip


def _group(cfg: StepConfig, rows: int) -> int:
    """Rows per shared prompt in a (micro-)batch of ``rows`` rows: G when the batch has the
    rollout layout (`StepConfig.shared_prompts`) and splits into whole groups, else 1."""
    g = cfg.group_size
    return g if cfg.shared_prompts and rows % g == 0 else 1


def _split(x, m: int):
    if x.shape[0] % m:
        raise ValueError(f"batch of {x.shape[0]} rows does not split into micro_batches={m}")
    return x.reshape(m, x.shape[0] // m, *x.shape[1:])


def make_compute_logprobs(
    apply_fn: Callable, cfg: StepConfig, policy: bool = True, jit: bool = True
):
    """Jitted ``fn(state, input_ids, attention_mask, completion_len) -> (policy_logp,
    ref_logp, policy_entropy)``, each [N,T] float32, micro-batched like the update. Use it
    to fill ``old_logp`` / ``ref_logp`` before the mu updates. ``jit=False`` gives the pure
    function (e.g. for `mesh.jit_logprobs`, which compiles it with shardings).

    ``policy=False`` skips the policy forward (returns ``(None, ref_logp, None)``): with
    ``mu == 1`` the update needs no stored old log-probs (see `on_policy`)."""

    def fn(state: TrainState, input_ids, attention_mask, completion_len: int):
        pol = policy_params(state.params, state.frozen, cfg)

        def one(carry, mb):
            ids, am = mb
            lp = ent = None
            group = _group(cfg, ids.shape[0])
            if policy:
                lp, ent = completion_logprobs(
                    apply_fn, pol, ids, am, completion_len, cfg.temperature, cfg.logprob_chunk,
                    group,
                )  # fmt: skip
            rp, _ = completion_logprobs(
                apply_fn, state.frozen, ids, am, completion_len, cfg.temperature,
                cfg.logprob_chunk, group,
            )  # fmt: skip
            return carry, (lp, rp, ent)

        m = cfg.micro_batches
        _, out = jax.lax.scan(one, None, (_split(input_ids, m), _split(attention_mask, m)))
        return tuple(None if x is None else x.reshape(-1, completion_len) for x in out)

    return jax.jit(fn, static_argnums=3) if jit else fn


def on_policy(cfg: StepConfig) -> bool:
    """True when one update is a single optimizer step (``mu == 1``): the "old" policy is
    then the current one, so the update uses ``stop_gradient(logp)`` of its own forward as
    old_logp (ratio exactly 1, gradient of the ratio = gradient of logp) instead of a
    separate forward pass - the same objective and gradient for 2N fewer FLOPs per token.
    A batch that carries ``old_logp`` (e.g. sampler log-probs) still uses it."""
    return cfg.mu == 1


def make_update(
    apply_fn: Callable,
    divergence: Divergence,
    optimizer: Optimizer,
    cfg: StepConfig,
    jit: bool = True,
):
    """Returns ``update(state, batch, key) -> (state, metrics)``, jitted with the state
    donated; ``jit=False`` gives the pure function (to vmap over an ES population of states
    or to scan inside a larger jitted program)."""
    logprobs = make_compute_logprobs(apply_fn, cfg)
    ref_logprobs = make_compute_logprobs(apply_fn, cfg, policy=False)

    def grads_of(trainable, state, mb, t):
        def objective(tr):
            pol = policy_params(tr, state.frozen, cfg)
            logp, ent = completion_logprobs(
                apply_fn, pol, mb["input_ids"], mb["attention_mask"], t, cfg.temperature,
                cfg.logprob_chunk, _group(cfg, mb["input_ids"].shape[0]),
            )  # fmt: skip
            old = jax.lax.stop_gradient(logp) if mb["old_logp"] is None else mb["old_logp"]
            loss, sums = loss_fn(
                logp, old, mb["ref_logp"], mb["advantages"], mb["mask"],
                mb["weights"], divergence, state.div_params, state.div_coef, cfg.loss,
            )  # fmt: skip
            sums["entropy_sum"] = jnp.sum(mb["mask"] * ent)
            return loss, sums

        return jax.value_and_grad(objective, has_aux=True)(trainable)

    def one_step(state: TrainState, batch, t):
        m = cfg.micro_batches
        mbs = jax.tree.map(lambda x: _split(x, m), batch)
        zeros = jax.tree.map(jnp.zeros_like, state.params)

        combine = {"ratio_min": jnp.minimum, "ratio_max": jnp.maximum}
        start = {"ratio_min": jnp.inf, "ratio_max": -jnp.inf}

        def body(acc, mb):
            g_acc, s_acc = acc
            (_, sums), g = grads_of(state.params, state, mb, t)
            g_acc = jax.tree.map(jnp.add, g_acc, g)
            s_acc = {k: combine.get(k, jnp.add)(s_acc[k], sums[k]) for k in sums}
            return (g_acc, s_acc), None

        first = jax.tree.map(lambda x: x[0], mbs)
        shapes = jax.eval_shape(lambda: grads_of(state.params, state, first, t)[0][1])
        s_init = {k: jnp.full(v.shape, start.get(k, 0.0), v.dtype) for k, v in shapes.items()}
        (grads, sums), _ = jax.lax.scan(body, (zeros, s_init), mbs)

        gnorm = optax.tree.norm(grads)
        ok = jnp.isfinite(sums["loss"]) & jnp.isfinite(gnorm)
        updates, new_opt = optimizer.tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        lr = optimizer.schedule(state.step)
        skipped = (~ok).astype(jnp.int32)
        state = dataclasses.replace(
            state,
            step=state.step + (1 - skipped),
            params=keep(new_params, state.params),
            opt_state=keep(new_opt, state.opt_state),
            skipped_in_row=jnp.where(ok, 0, state.skipped_in_row + 1),
            skipped_total=state.skipped_total + skipped,
        )
        return state, dict(sums, grad_norm=gnorm, lr=jnp.asarray(lr, jnp.float32))

    def update(state: TrainState, batch: dict, key: jax.Array):
        del key  # no stochastic objective yet (deviation 2)
        t = batch["completion_mask"].shape[1]
        mask = loss_mask(batch["completion_mask"], batch.get("truncated"), cfg.loss)
        num_items = batch.get("num_items_in_batch")
        if num_items is None and cfg.loss.loss_type == "dapo":
            # TRL: completion tokens of everything accumulated into one optimizer step; here
            # one optimizer step sees the whole batch (all micro-batches, all devices)
            num_items = jnp.sum(mask)
        weights = token_weights(mask, cfg.loss, num_items)
        need_old = "old_logp" not in batch and not on_policy(cfg)
        need_ref = "ref_logp" not in batch
        lp = rp = None
        if need_old:
            lp, rp, _ = logprobs(state, batch["input_ids"], batch["attention_mask"], t)
        elif need_ref:
            rp = ref_logprobs(state, batch["input_ids"], batch["attention_mask"], t)[1]
        core = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "advantages": batch["advantages"],
            "mask": mask,
            "weights": weights,
            "old_logp": lp if need_old else batch.get("old_logp"),  # None: on-policy
            "ref_logp": rp if need_ref else batch["ref_logp"],
        }
        core = jax.tree.map(jax.lax.stop_gradient, core)
        if cfg.mu == 1:
            state, s = one_step(state, core, t)
        else:
            state, s_all = jax.lax.scan(lambda st, _: one_step(st, core, t), state, None, cfg.mu)
            red = {"ratio_min": jnp.min, "ratio_max": jnp.max}
            s = {k: red.get(k, jnp.mean)(v) for k, v in s_all.items()}
        tok = jnp.maximum(s["tokens"], 1.0)
        metrics = {
            "train/loss": s["loss"],
            "train/policy_loss": s["policy_loss"],
            "div/mean": s["div_sum"] / tok,
            "train/entropy": s["entropy_sum"] / tok,
            "clip/low_frac": s["low_clip"] / tok,
            "clip/high_frac": s["high_clip"] / tok,
            "ratio/mean": s["ratio_sum"] / tok,
            "ratio/min": jnp.where(s["tokens"] > 0, s["ratio_min"], 1.0),  # finite if no tokens
            "ratio/max": jnp.where(s["tokens"] > 0, s["ratio_max"], 1.0),
            "train/grad_norm": s["grad_norm"],
            "train/lr": s["lr"],
            "train/tokens": s["tokens"],
            "train/skipped_steps": state.skipped_total.astype(jnp.float32),
            "train/skipped_in_row": state.skipped_in_row.astype(jnp.float32),
        }
        return state, metrics

    return jax.jit(update, donate_argnums=0) if jit else update


def check_skips(metrics: dict, max_in_row: int) -> None:
    """Host-side: raise if the last ``max_in_row`` optimizer steps were all skipped."""
    n = int(metrics["train/skipped_in_row"])
    if n >= max_in_row:
        raise RuntimeError(
            f"{n} consecutive optimizer steps skipped (non-finite loss or gradients; "
            f"{int(metrics['train/skipped_steps'])} in total): stopping. Lower the learning "
            "rate or the divergence coefficient, check the rewards / advantages for NaN, or "
            "run the model in float32 (run.max_skipped_in_row sets this limit)"
        )
