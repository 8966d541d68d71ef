"""Inner runs of an ES population: T GBMPO steps per member, then greedy validation fitness.

Each member m is a TrainState that starts from the same base policy and differs only in its
mirror-map parameters ``div_params[m]`` (GBMPO, arXiv 2602.04380, section 4: "train the base
model from scratch for T steps with that mirror map, same seed for all candidates"). Common
random numbers: at inner step t every member gets the same prompts (`TrainData.batch(t, n)`)
and the same sampling key ``fold_in(key(run.seed), t)`` (the keys train.py uses), so fitness
differences come from the mirror maps, not from the draw.

The stacked state has a leading member axis on everything a member owns (params, optimizer
state, div_params, counters); the frozen reference and the coefficient are shared
(``in_axes=None``), so P members cost P policies, not 2P. Per inner step, for all members in
one jitted program each: (1) the vmapped pure rollout (`sampling.rollout`, shared prompts and
key), (2) rewards on the host (decode + task reward), (3) the vmapped update
(`train_step.make_update(jit=False)` with advantages inside). Fitness: greedy accuracy
(binary reward, pass@1 for code) on the fixed validation subset (`TrainData.eval_examples`).

Modes (`run_population(..., mode)`), same fitness for the same seeds:
  * ``vmap``: all P members in one program per step on the default device.
  * ``mesh``: the same programs with the member axis sharded over a ``pop`` mesh axis
    (``Mesh(devices.reshape(pop, data), ("pop", "data"))``, Auto axis types); each member
    lives on its own slice of devices, the shared reference is replicated.
  * ``sequential``: one member at a time, through the same programs with a member axis of 1
    (one code path, so the three modes cannot drift apart).

Measured (bench/es_bench.py, 2-core shared CPU, P=8): vmap is not faster than sequential
there (demo model 13.1 s vs 11.9 s per inner step, compute-bound; tiny model 0.4-1.2x, noisy),
so on CPU `sequential` is as good; vmap's gain is expected where one member underuses the
device (accelerators), not yet measured.

Deviation: the old / reference log-probs are computed inside the vmapped update (the
state-at-start-of-update definition of train.py), not in a separate program overlapping the
rewards.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as PS

from gbmpo_jax import episodes, models, sampling
from gbmpo_jax.train_step import TrainState, init_state, make_update, policy_params

MODES = ("vmap", "mesh", "sequential")


class InnerResult(NamedTuple):
    fitness: np.ndarray  # [P] mean binary validation reward = greedy accuracy (pass@1)
    aux: dict  # name -> [P]: eval/mean_length, inner/reward_mean, inner/loss_mean, inner/param_norm


class Programs(NamedTuple):
    init_members: Any  # (div_params [P,...]) -> stacked TrainState
    inner_step: Any  # (states, step) -> (states, metrics dict of [P] numpy arrays)
    evaluate: Any  # (states) -> InnerResult without the inner/* training aux


def _state_axes(state: TrainState) -> TrainState:
    """vmap axes: 0 for what a member owns, None for the shared reference and coefficient."""
    zero = lambda t: jax.tree.map(lambda _: 0, t)  # noqa: E731
    return TrainState(
        step=0, params=zero(state.params), opt_state=zero(state.opt_state),
        frozen=jax.tree.map(lambda _: None, state.frozen), div_params=zero(state.div_params),
        div_coef=None, skipped_in_row=0, skipped_total=0,
    )  # fmt: skip


def pop_mesh(pop_size: int, devices=None) -> Mesh:
    """(pop, data) mesh: the largest pop axis that divides both P and the device count."""
    devices = list(devices if devices is not None else jax.devices())
    pop = math.gcd(pop_size, len(devices))
    data = len(devices) // pop
    grid = np.array(devices[: pop * data]).reshape(pop, data)
    return Mesh(grid, ("pop", "data"))


def make_programs(cfg, model, tokenizer, obj, td: episodes.TrainData, mesh: Mesh | None = None):
    """Builds the jitted population programs for the run config ``cfg`` (see module doc)."""
    mc, scfg = model.config, obj.step_cfg
    base = init_state(
        model.params, obj.optimizer, obj.div_params, cfg.objective.coef, scfg,
        key=jax.random.fold_in(jax.random.key(cfg.run.seed), 0x10A),
    )  # fmt: skip
    axes = _state_axes(base)
    update = make_update(obj.apply_fn, obj.divergence, obj.optimizer, scfg, jit=False)
    base_key = jax.random.key(cfg.run.seed)
    n_prompts, g = cfg.rollout.prompts_per_step, cfg.rollout.group_size
    max_prompt = cfg.task.max_prompt_len
    pad = obj.sampling.pad_token_id

    def put(x, member_axis: bool):
        if mesh is None:
            return x
        spec = PS("pop") if member_axis else PS()
        return jax.device_put(x, NamedSharding(mesh, spec))

    def put_state(states):
        if mesh is None:
            return states
        shard = lambda ax, x: put(x, ax == 0)  # noqa: E731
        return jax.tree.map(shard, axes, states, is_leaf=lambda a: a is None or a == 0)

    def init_members(div_params):
        p = jax.tree.leaves(div_params)[0].shape[0]
        rep = lambda x: jnp.repeat(jnp.asarray(x)[None], p, axis=0)  # noqa: E731
        st = dataclasses.replace(
            base, step=rep(base.step), params=jax.tree.map(rep, base.params),
            opt_state=jax.tree.map(rep, base.opt_state),
            div_params=jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), div_params),
            skipped_in_row=rep(base.skipped_in_row), skipped_total=rep(base.skipped_total),
            # fresh copies: the step donates the state, and `base` serves every population
            frozen=jax.tree.map(jnp.copy, base.frozen), div_coef=jnp.copy(base.div_coef),
        )  # fmt: skip
        return put_state(st)

    def make_roll(sc):
        def one(trainable, frozen, ids, mask, key):
            # the sampler reads the policy in the model's dtype (float32 master weights)
            pol = policy_params(trainable, frozen, scfg, dtype=cfg.model.dtype)
            return sampling.rollout(models.Model(mc, pol), ids, mask, key, sc)

        return jax.jit(jax.vmap(one, in_axes=(0, None, None, None, None)))

    roll, roll_greedy = make_roll(obj.sampling), make_roll(obj.eval_sampling)

    def upd(state, batch, rewards, key):
        adv, _ = obj.advantage_fn(rewards, g)
        return update(state, dict(batch, advantages=adv), key)

    step_fn = jax.jit(
        jax.vmap(upd, in_axes=(axes, 0, 0, None), out_axes=(axes, 0)), donate_argnums=0
    )

    def decode(out, i):
        return [
            tokenizer.decode(out.tokens[i, r, : out.lengths[i, r]].tolist(),
                             skip_special_tokens=True)
            for r in range(out.tokens.shape[1])
        ]  # fmt: skip

    def inner_step(states, step: int):
        examples = td.batch(step, n_prompts)
        ids, mask = episodes.encode_prompts(tokenizer, [e.prompt for e in examples],
                                            max_prompt, pad, td.chat_kwargs)  # fmt: skip
        key = jax.random.fold_in(base_key, step)
        out = jax.device_get(roll(states.params, states.frozen, ids, mask, key))
        p = out.tokens.shape[0]
        rows = episodes._repeat(examples, g)
        rewards = np.stack([td.rewards(decode(out, i), rows) for i in range(p)])
        batch = {
            "input_ids": np.concatenate([out.prompt_ids, out.tokens], axis=2),
            "attention_mask": np.concatenate([out.prompt_mask, out.mask], axis=2),
            "completion_mask": out.mask,
            "truncated": out.truncated,
        }
        batch = jax.tree.map(lambda x: put(jnp.asarray(x), True), batch)
        states, m = step_fn(states, batch, put(jnp.asarray(rewards), True),
                            jax.random.fold_in(key, 1))  # fmt: skip
        m = {k: np.asarray(v) for k, v in jax.device_get(m).items()}
        m["rollout/reward_mean"] = rewards.mean(axis=1)
        return states, m

    def evaluate(states) -> InnerResult:
        exs = td.eval_examples
        if not exs:
            raise ValueError("ES fitness needs a validation split: set task.eval_split")
        bs = min(cfg.task.eval_size, len(exs), 64)
        acc, lengths = [], []
        kw = dict(td.reward_kwargs)
        if td.task.kind == "code":
            kw["partial"] = False  # pass@1: every assert must pass
        for s in range(0, len(exs), bs):
            chunk = exs[s : s + bs]
            convs = [e.prompt for e in chunk] + [chunk[-1].prompt] * (bs - len(chunk))
            ids, mask = episodes.encode_prompts(tokenizer, convs, max_prompt, pad,
                                                td.chat_kwargs)  # fmt: skip
            out = jax.device_get(roll_greedy(states.params, states.frozen, ids, mask,
                                             jax.random.key(0)))  # fmt: skip
            for i in range(out.tokens.shape[0]):
                texts = decode(out, i)[: len(chunk)]
                r = np.asarray(td.task.rewards(texts, chunk, **kw), np.float32)
                acc.append((i, r))
                lengths.append((i, out.lengths[i, : len(chunk)]))
        p = jax.tree.leaves(states.div_params)[0].shape[0]
        fit = np.array([np.concatenate([a for j, a in acc if j == i]).mean() for i in range(p)])
        ln = np.array([np.concatenate([a for j, a in lengths if j == i]).mean() for i in range(p)])
        norm = jax.device_get(jax.vmap(lambda t: jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(
            jnp.float32))) for x in jax.tree.leaves(t))))(states.params))  # fmt: skip
        return InnerResult(fit.astype(np.float32),
                           {"eval/mean_length": ln, "inner/param_norm": np.asarray(norm)})  # fmt: skip

    return Programs(init_members, inner_step, evaluate)


def _run(progs: Programs, div_params, steps: int) -> InnerResult:
    states = progs.init_members(div_params)
    rewards, losses = [], []
    for t in range(1, steps + 1):
        states, m = progs.inner_step(states, t)
        rewards.append(m["rollout/reward_mean"])
        losses.append(m["train/loss"])
    res = progs.evaluate(states)
    p = res.fitness.shape[0]
    aux = dict(res.aux)
    aux["inner/reward_mean"] = np.mean(rewards, axis=0) if rewards else np.zeros(p)
    aux["inner/loss_mean"] = np.mean(losses, axis=0) if losses else np.zeros(p)
    return InnerResult(res.fitness, aux)


def run_population(programs: dict, mode: str, div_params, steps: int) -> InnerResult:
    """Fitness of every member (``div_params``: mirror params stacked on a leading axis P).

    ``programs``: {"vmap" | "mesh" | "sequential": Programs} (see `make_programs`; sequential
    uses the unsharded programs)."""
    if mode not in MODES:
        raise ValueError(f"meta.population_mode={mode!r} is not one of {list(MODES)}")
    if mode != "sequential":
        return _run(programs[mode], div_params, steps)
    p = jax.tree.leaves(div_params)[0].shape[0]
    parts = [
        _run(programs["vmap"], jax.tree.map(lambda x, i=i: x[i : i + 1], div_params), steps)
        for i in range(p)
    ]
    return InnerResult(
        np.concatenate([r.fitness for r in parts]),
        {k: np.concatenate([r.aux[k] for r in parts]) for k in parts[0].aux},
    )
