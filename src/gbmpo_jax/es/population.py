"""Inner runs of an ES population: T GBMPO steps per member, then greedy validation fitness.

Each member m is a TrainState that starts from the same base policy and differs only in its
mirror-map parameters ``div_params[m]`` (GBMPO, arXiv 2602.04380, section 4: "train the base
model from scratch for T steps with that mirror map, same seed for all candidates"). Common
random numbers: at inner step t every member gets the same prompts (`TrainData.batch(t, n)`)
and the same sampling key ``fold_in(key(run.seed), t)`` (the keys train.py uses), so fitness
differences come from the mirror maps, not from the draw.

The inner step is the step program of train.py (`program.make_program(members=True)` +
`program.make_step`): the same pure functions vmapped over a leading member axis of the
state (params, optimizer state, div_params, counters); the frozen reference and the
coefficient are shared (``in_axes=None``), so P members cost P policies, not 2P. Fitness:
greedy accuracy (binary reward, pass@1 for code) on the fixed validation subset
(`TrainData.eval_examples`).

Modes (`run_population(..., mode)`), same fitness for the same seeds (to float rounding):
  * ``vmap``: all P members in one program per step on the default device; inside it the
    members run ``member_chunk`` at a time (`program._over_members`: a loop over groups of
    vmapped members; chunk P = one vmap, 1 = one unbatched member per iteration). The
    default (`auto_chunk`) batches as many members as the backend's row budget allows.
  * ``mesh``: the members vmapped together with the member axis sharded over a ``pop`` mesh
    axis (``Mesh(devices.reshape(pop, data), ("pop", "data"))``, Auto axis types); each
    member lives on its own slice of devices, the shared reference is replicated.
  * ``sequential``: one member at a time, through the same programs with a member axis of 1
    called once per member (one code path, so the three modes cannot drift apart).

Measured (bench/es_bench.py, idle 2-core CPU, P=8, one inner step; BENCHMARKS.md): at the ES
demo's shape (128 rows per member) one member fills the cores, and vmapping all 8 is 0.64x
sequential while the in-program loop (chunk 1, the automatic choice) is 1.33x; at the "tiny"
shape (8 rows) vmapping all 8 (automatic) is 2.75x. Accelerators: not yet measured.
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

from gbmpo_jax.rl import program
from gbmpo_jax.sampler import sampling
from gbmpo_jax.tasks import episodes

MODES = ("vmap", "mesh", "sequential")


class InnerResult(NamedTuple):
    fitness: np.ndarray  # [P] mean binary validation reward = greedy accuracy (pass@1)
    aux: dict  # name -> [P]: eval/mean_length, inner/reward_mean, inner/loss_mean, inner/param_norm


class Programs(NamedTuple):
    init_members: Any  # (div_params [P,...]) -> stacked TrainState
    inner_step: Any  # (states, step) -> (states, metrics dict of [P] numpy arrays)
    evaluate: Any  # (states) -> InnerResult without the inner/* training aux


# rows (prompts x G) one program iteration should batch, per backend: on a CPU one member of
# the demo shape (128 rows) already keeps the cores busy and P-wide batched matmuls only cost
# (measured: bench/es_bench.py, BENCHMARKS.md); an accelerator wants far larger batches
# (a guess until measured on one).
ROWS_PER_ITERATION = {"cpu": 64}
ROWS_PER_ITERATION_DEFAULT = 4096


def auto_chunk(rows_per_member: int, pop_size: int, platform: str | None = None) -> int:
    """Members to vmap together (`program._over_members`): as many as fit the backend's row
    budget, at least 1, at most P."""
    platform = platform or jax.default_backend()
    budget = ROWS_PER_ITERATION.get(platform, ROWS_PER_ITERATION_DEFAULT)
    return max(1, min(pop_size, budget // max(rows_per_member, 1)))


def pop_mesh(pop_size: int, devices=None) -> Mesh:
    """(pop, data) mesh: the largest pop axis that divides both P and the device count."""
    devices = list(devices if devices is not None else jax.devices())
    pop = math.gcd(pop_size, len(devices))
    data = len(devices) // pop
    grid = np.array(devices[: pop * data]).reshape(pop, data)
    return Mesh(grid, ("pop", "data"))


def make_programs(cfg, model, tokenizer, obj, td: episodes.TrainData, mesh: Mesh | None = None,
                  member_chunk: int | None = None):  # fmt: skip
    """The population programs for the run config ``cfg`` (see module doc): the step program
    of `program.py` mapped over members (``member_chunk`` vmapped at a time, None = all; a
    ``mesh`` always vmaps all, its member axis is sharded), and greedy fitness."""
    mc = model.config
    base = program.init_state(cfg, model.params, obj)
    axes = program.member_axes(base)
    prog = program.make_program(
        mc,
        obj,
        dtype=cfg.model.dtype,
        members=True,
        member_chunk=None if mesh is not None else member_chunk,
    )
    step = program.make_step(prog, cfg, td, tokenizer, obj.sampling)
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

    def inner_step(states, t: int):
        states, out = step(states, t)
        m = dict(out.metrics)
        m["rollout/reward_mean"] = out.rewards.mean(axis=1)
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
            out = jax.device_get(prog.rollout(states, ids, mask, jax.random.key(0),
                                              obj.eval_sampling))  # fmt: skip
            for i in range(out.tokens.shape[0]):
                texts = sampling.decode(tokenizer, out.tokens[i], out.lengths[i], len(chunk))
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
