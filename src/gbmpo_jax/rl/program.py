"""The GBMPO step program, written once: rollout -> host rewards -> advantages + update.

One RL step (arXiv 2602.04380, section 1) for a state with an optional leading member axis:

  prompts of step t (TrainData.batch, seeded)  -> chat template -> ids [B,P]
  -> rollout  G completions per prompt          (device; key fold_in(key(run.seed), t))
  -> score    old / reference log-probs [N,T]   (device, dispatched before the rewards so it
                                                 runs while the host scores them)
  -> rewards  decode + task reward [N]          (host: math check / sandboxed code)
  -> learn    advantages [N] and mu optimizer   (device, one program; train_step.make_update)
              steps -> (state, metrics)

`make_program` builds the device half from pure per-member functions (`member_fns`) in one
of two ways, and `make_step` wraps it in the host half shared by both:

  * ``members=False`` (train.py, the one-member case): the per-member functions compiled
    directly with the run's mesh shardings (`mesh.jit_update` / `jit_logprobs`,
    `placement.jit_rollout`): no batching transform, so a single run keeps its exact numerics.
  * ``members=True`` (population.py, an ES population): the same functions mapped over a
    leading member axis of the state (params, optimizer state, divergence params, counters;
    the frozen reference and the coefficient are shared, `SHARED` / `member_axes`):
    ``member_chunk`` members vmapped at a time, the groups looped inside the one program
    (`_over_members`); placed on a ``pop`` mesh axis by the caller when one is given.
    Members share prompts and keys (common random numbers), so fitness differences come
    from the mirror maps, not from the draw.

`init_state(cfg, params, obj)` is the one way a run's TrainState is made (named seeds:
`seeds`). Deliberate deviation from the paper's code: none in the step; the order of the
host and device halves only overlaps work.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gbmpo_jax import models, seeds
from gbmpo_jax.rl import placement
from gbmpo_jax.rl.train_step import (
    TrainState,
    make_compute_logprobs,
    make_update,
    on_policy,
    policy_params,
)
from gbmpo_jax.rl.train_step import init_state as _init_state
from gbmpo_jax.sampler import sampling
from gbmpo_jax.scale import mesh as mesh_lib
from gbmpo_jax.tasks import episodes


def init_state(cfg, params, obj) -> TrainState:
    """The run's initial TrainState from `params` (the policy and reference) and the
    objective `obj` (policy.Objective): LoRA adapters from the STATE_INIT stream. The
    divergence params are copied (the step donates the state; `obj` stays usable); float32
    master weights alias `params`, so callers hand them over (`del model`)."""
    return _init_state(
        params, obj.optimizer, jax.tree.map(jnp.copy, obj.div_params), cfg.objective.coef,
        obj.step_cfg,
        key=seeds.key(cfg.run.seed, seeds.STATE_INIT),
    )  # fmt: skip


# the fields of a population state that all members share (`member_axes`: None)
SHARED = ("frozen", "div_coef")


class MemberFns(NamedTuple):
    """Pure functions of ONE member (no member axis)."""

    policy: Callable  # (trainable, frozen) -> policy params in the model dtype
    rollout: Callable  # (trainable, frozen, ids, mask, key, sampling_cfg) -> sampling.Rollout
    score: Callable  # (state, input_ids, attention_mask, T) -> (old_logp | None, ref_logp)
    learn: Callable  # (state, batch with rewards [N], key) -> (state, metrics)


def member_fns(model_config, obj, dtype=None) -> MemberFns:
    """The step's device functions for one member (`obj`: policy.Objective)."""
    # every batch of the program is a rollout's: row b*G + g holds prompt b
    scfg = dataclasses.replace(obj.step_cfg, shared_prompts=True)
    update = make_update(obj.apply_fn, obj.divergence, obj.optimizer, scfg, jit=False)
    logprobs = make_compute_logprobs(obj.apply_fn, scfg, policy=not on_policy(scfg), jit=False)

    def policy(trainable, frozen):
        return policy_params(trainable, frozen, scfg, dtype=dtype)

    def rollout(trainable, frozen, ids, mask, key, sampling_cfg):
        model = models.Model(model_config, policy(trainable, frozen))
        return sampling.rollout(model, ids, mask, key, sampling_cfg)

    def score(state, input_ids, attention_mask, completion_len: int):
        return logprobs(state, input_ids, attention_mask, completion_len)[:2]

    def learn(state, batch, key):
        batch = dict(batch)
        adv, adv_metrics = obj.advantage_fn(batch.pop("rewards"), scfg.group_size)
        state, metrics = update(state, dict(batch, advantages=adv), key)
        return state, {**metrics, **adv_metrics}

    return MemberFns(policy, rollout, score, learn)


def member_axes(state: TrainState) -> TrainState:
    """vmap axes of a population state: 0 for what a member owns, None for the `SHARED`
    fields (the frozen reference and the divergence coefficient)."""
    mine, shared = _split(state)
    none = {f: jax.tree.map(lambda _: None, v) for f, v in shared.items()}
    return _merge(jax.tree.map(lambda _: 0, mine), none)


class Program(NamedTuple):
    """The compiled device half of a step (see the module docstring)."""

    members: bool
    policy: Callable  # state -> policy params ([P, ...] with members)
    rollout: Callable  # (state, ids [B,P], mask, key, sampling_cfg) -> Rollout ([P, ...])
    score: Callable  # (state, batch) -> (old_logp | None, ref_logp)  [(P,) N, T]
    learn: Callable  # (state, batch with rewards, key) -> (state, metrics), state donated
    # one run only: `sampling.generate`'s signature on the mesh (evaluation reuses it)
    generate: Callable | None = None


def _join(prompt_ids, tokens, prompt_mask, mask, truncated):
    """The training batch (DESIGN.md layout) from a rollout's buffers."""
    return {
        "input_ids": jnp.concatenate([prompt_ids, tokens], axis=-1),
        "attention_mask": jnp.concatenate([prompt_mask, mask], axis=-1),
        "completion_mask": mask,
        "truncated": truncated,
    }


def make_program(model_config, obj, *, dtype=None, members=False, mesh=None, state_sh=None,
                 member_chunk: int | None = None) -> Program:  # fmt: skip
    """``members=False``: compiled for one state on ``mesh`` (``state_sh`` its shardings, from
    `placement.shard_state`); ``members=True``: mapped over the member axis of a population
    state, ``member_chunk`` members vmapped at a time (None: all; see `_over_members`)."""
    fns = member_fns(model_config, obj, dtype)
    if not members:
        params_sh = placement.param_shardings(model_config, mesh)
        merged = jax.jit(lambda st: fns.policy(st.params, st.frozen), out_shardings=params_sh)
        generate = placement.jit_rollout(mesh, params_sh)
        score = mesh_lib.jit_logprobs(fns.score, state_sh, mesh)

        def rollout(state, ids, mask, key, sc):
            return generate(models.Model(model_config, merged(state)), ids, mask, key, sc)

        return Program(False, merged, rollout, _score_batch(score),
                       mesh_lib.jit_update(fns.learn, state_sh, mesh), generate)  # fmt: skip

    over = _over_members(member_chunk)

    def roll(trainable, frozen, ids, mask, key, sc):
        return over(lambda tr, _: fns.rollout(tr, frozen, ids, mask, key, sc), trainable, None)

    def score(state, input_ids, attention_mask, completion_len: int):
        mine, shared = _split(state)

        def one(m, shared):
            return fns.score(_merge(m[0], shared), m[1], m[2], completion_len)

        return over(one, (mine, input_ids, attention_mask), shared)

    def learn(state, batch, key):
        mine, shared = _split(state)

        def one(m, shared):
            st, metrics = fns.learn(_merge(m[0], shared), m[1], key)
            return _split(st)[0], metrics

        mine, metrics = over(one, (mine, batch), shared)
        return _merge(mine, shared), metrics

    roll = jax.jit(roll, static_argnums=5)
    return Program(
        True,
        jax.jit(jax.vmap(fns.policy, in_axes=(0, None))),
        lambda st, ids, mask, key, sc: roll(st.params, st.frozen, ids, mask, key, sc),
        _score_batch(jax.jit(score, static_argnums=3)),
        jax.jit(learn, donate_argnums=0),
    )


def _split(state: TrainState) -> tuple[TrainState, dict]:
    """(the member-owned part with the shared fields set to None, the shared fields)."""
    shared = {f: getattr(state, f) for f in SHARED}
    return dataclasses.replace(state, **dict.fromkeys(SHARED)), shared


def _merge(mine: TrainState, shared: dict) -> TrainState:
    return dataclasses.replace(mine, **shared)


def _over_members(chunk: int | None):
    """``over(fn, mapped, shared)``: ``fn(member_slice, shared)`` for every member of
    ``mapped`` (pytree with a leading member axis P), stacked along P.

    ``chunk`` None or >= P: one ``jax.vmap`` over all P members. Otherwise ``lax.map`` with
    ``batch_size=chunk``: a loop inside the same program over groups of ``chunk`` vmapped
    members (chunk 1 = one member per iteration, unbatched matmuls). Where one member
    already fills the device (a CPU at the demo shape) the loop is faster than the P-wide
    batched matmuls and than P separate programs; where it does not, vmap is (BENCHMARKS.md).
    """

    def over(fn, mapped, shared):
        p = jax.tree.leaves(mapped)[0].shape[0]
        one = lambda m: fn(m, shared)  # noqa: E731
        if chunk is None or chunk >= p:
            return jax.vmap(one)(mapped)
        return jax.lax.map(one, mapped, batch_size=chunk)

    return over


def _score_batch(score):
    """(state, batch) -> score(state, input_ids, attention_mask, T), T static."""
    return lambda state, b: score(state, b["input_ids"], b["attention_mask"],
                                  b["completion_mask"].shape[-1])  # fmt: skip


class StepOutput(NamedTuple):
    """One step's host-side record; arrays have a leading member axis [P] (P = 1 in train)."""

    examples: list  # this host's rows: the example of each row (prompts repeated G times)
    texts: list[list[str]]  # [P][n] decoded completions of this host's rows
    rewards: np.ndarray  # [P, n] float32
    lengths: np.ndarray  # [P, n] completion tokens
    truncated: np.ndarray  # [P, n] bool
    metrics: dict  # device metrics as numpy: [P] arrays (members) or scalars
    times: dict  # rollout_s, reward_s, update_s (wall, host view)


def make_step(program: Program, cfg, td: episodes.TrainData, tokenizer, sampling_cfg, *,
              mesh=None) -> Callable[[Any, int], tuple[Any, StepOutput]]:  # fmt: skip
    """``step(state, t) -> (state, StepOutput)``: step t (1-based) of a run or of every
    member of a population; keys and prompts are pure functions of (run.seed, t), so a
    resumed run repeats an uninterrupted one. The state is donated."""
    n_prompts, g = cfg.rollout.prompts_per_step, cfg.rollout.group_size
    base_key = jax.random.key(cfg.run.seed)
    multihost = mesh is not None and jax.process_count() > 1 and not program.members
    n_rows = n_prompts * g

    def step(state, t: int):
        t0 = time.monotonic()
        examples = td.batch(t, n_prompts)
        ids, mask = episodes.encode_prompts(tokenizer, [e.prompt for e in examples],
                                            cfg.task.max_prompt_len, sampling_cfg.pad_token_id,
                                            td.chat_kwargs)  # fmt: skip
        if multihost:
            ids, mask = episodes.global_prompts(ids, mask, mesh)
        key = jax.random.fold_in(base_key, t)
        out = program.rollout(state, ids, mask, key, sampling_cfg)
        batch = join(out, program.members)
        # Dispatch the log-prob pass first: the device runs it while the host scores rewards.
        old_lp, ref_lp = program.score(state, batch)
        if multihost:
            lo, hi = mesh_lib.host_row_range(n_rows, mesh)
            local = {f: mesh_lib.host_local_rows(getattr(out, f))[None]
                     for f in ("tokens", "lengths", "truncated")}  # fmt: skip
        else:
            lo, hi = 0, n_rows
            local = jax.device_get({f: getattr(out, f) for f in ("tokens", "lengths",
                                                                 "truncated")})  # fmt: skip
            if not program.members:
                local = {k: v[None] for k, v in local.items()}
        t_gen = time.monotonic()
        rows = [e for e in examples for _ in range(g)][lo:hi]
        texts = [sampling.decode(tokenizer, tok, ln, hi - lo)
                 for tok, ln in zip(local["tokens"], local["lengths"], strict=True)]  # fmt: skip
        rewards = np.stack([td.rewards(tx, rows) for tx in texts]).astype(np.float32)
        t_rew = time.monotonic()
        if multihost:
            dev_rewards = mesh_lib.global_batch_from_host_rows(rewards[0], mesh, n_rows)
        else:
            dev_rewards = jnp.asarray(rewards if program.members else rewards[0])
        batch = dict(batch, ref_logp=ref_lp, rewards=dev_rewards)
        if old_lp is not None:  # None when mu == 1: the update uses its own forward
            batch["old_logp"] = old_lp
        state, m = program.learn(state, batch, jax.random.fold_in(key, seeds.UPDATE))
        m = jax.device_get(m)
        m = {k: (np.asarray(v) if program.members else float(v)) for k, v in m.items()}
        times = {"rollout_s": t_gen - t0, "reward_s": t_rew - t_gen,
                 "update_s": time.monotonic() - t_rew}  # fmt: skip
        return state, StepOutput(rows, texts, rewards, np.asarray(local["lengths"]),
                                 np.asarray(local["truncated"]), m, times)  # fmt: skip

    return step


_JOIN = {False: jax.jit(_join), True: jax.jit(jax.vmap(_join))}


def join(out: sampling.Rollout, members: bool = False) -> dict:
    """The training batch of a rollout, on device (keeps its row sharding; no host round
    trip): input_ids / attention_mask [(P,) N, P+T], completion_mask [(P,) N, T], truncated."""
    return _JOIN[members](out.prompt_ids, out.tokens, out.prompt_mask, out.mask, out.truncated)


def rollout_metrics(out: StepOutput, member: int = 0) -> dict:
    """rollout/* scalars of one member's step."""
    r, ln, tr = out.rewards[member], out.lengths[member], out.truncated[member]
    return {
        "rollout/reward_mean": float(np.mean(r)),
        "rollout/reward_std": float(np.std(r)),
        "rollout/length_mean": float(np.mean(ln)),
        "rollout/length_max": float(np.max(ln)),
        "rollout/truncated_frac": float(np.mean(tr)),
    }
