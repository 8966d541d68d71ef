"""The one step program (gbmpo_jax.rl.program): a population member runs training's step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbmpo_jax import seeds
from gbmpo_jax.es import strategies as es
from gbmpo_jax.rl import placement, program
from gbmpo_jax.scale import mesh as mesh_lib


def _single_run(cfg, model, tok, obj, td, steps):
    mesh = mesh_lib.setup(cfg.mesh, jax.devices()[:1])
    # float32 master weights alias the given params and the step donates them: pass a copy
    params = jax.tree.map(jnp.copy, model.params)
    state, sh = placement.shard_state(program.init_state(cfg, params, obj), model.config, mesh)
    prog = program.make_program(model.config, obj, mesh=mesh, state_sh=sh)
    step = program.make_step(prog, cfg, td, tok, obj.sampling, mesh=mesh)
    outs = []
    for t in range(1, steps + 1):
        state, out = step(state, t)
        outs.append(out)
    return state, outs


@pytest.fixture(scope="module")
def single(digit_run):
    """Two steps of the single-run program (compiled once for the module)."""
    return _single_run(*digit_run, 2)


@pytest.mark.parametrize("chunk", [None, 1])
def test_population_member_equals_the_training_step(digit_run, single, chunk):
    """Member 0 of a population (its mirror map = the run's) follows the single run's
    trajectory: same prompts, keys, completions, rewards and updates, whether the members
    are vmapped together (chunk None) or looped one at a time inside the program (1)."""
    cfg, model, tok, obj, td = digit_run
    state, outs = single
    base = program.init_state(cfg, model.params, obj)
    other = es.mirror_adapter()
    z = other.from_params(jax.device_get(obj.div_params))
    div = other.to_params(np.stack([z, z + 1.5]))  # member 1: another map
    members = jax.tree.map(lambda x: np.repeat(np.asarray(x)[None], 2, axis=0), base)
    members = members.__class__(**{**members.__dict__, "frozen": base.frozen,
                                   "div_coef": base.div_coef, "div_params": div})  # fmt: skip
    prog = program.make_program(model.config, obj, members=True, member_chunk=chunk)
    step = program.make_step(prog, cfg, td, tok, obj.sampling)
    for t in range(1, 3):
        members, out = step(members, t)
        single = outs[t - 1]
        assert out.texts[0] == single.texts[0], t
        np.testing.assert_array_equal(out.rewards[0], single.rewards[0])
        for k in ("train/loss", "train/grad_norm", "adv/std", "div/mean"):
            np.testing.assert_allclose(out.metrics[k][0], single.metrics[k], rtol=1e-4,
                                       atol=1e-7, err_msg=k)  # fmt: skip
    for a, b in zip(jax.tree.leaves(members.params), jax.tree.leaves(state.params), strict=True):
        # atol: Adam's normalised step turns the rounding of near-zero gradient entries into
        # ~1e-6 differences (unbatched vs batched matmuls sum in different orders)
        np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b), rtol=1e-4, atol=1e-5)
    moved = [np.abs(np.asarray(a)[0] - np.asarray(a)[1]).max()
             for a in jax.tree.leaves(members.params)]  # fmt: skip
    assert max(moved) > 1e-6  # the other map made member 1 differ


def test_step_records_one_member_axis(digit_run, single):
    cfg = digit_run[0]
    out = single[1][0]
    n = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    assert out.rewards.shape == out.lengths.shape == out.truncated.shape == (1, n)
    assert len(out.texts) == 1 and len(out.texts[0]) == n == len(out.examples)
    assert {"train/loss", "adv/zero_std_frac", "adv/reward_mean"} <= set(out.metrics)
    m = program.rollout_metrics(out)
    assert m["rollout/reward_mean"] == pytest.approx(float(out.rewards.mean()))


def test_named_seeds_are_distinct_streams():
    names = ("MODEL_INIT", "STATE_INIT", "EVAL_SUBSET", "UPDATE")
    assert len({getattr(seeds, n) for n in names}) == len(names)
    a, b = seeds.key(0, seeds.MODEL_INIT), seeds.key(0, seeds.STATE_INIT)
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(b))
    ref = jax.random.fold_in(jax.random.key(3), seeds.STATE_INIT)
    np.testing.assert_array_equal(jax.random.key_data(seeds.key(3, seeds.STATE_INIT)),
                                  jax.random.key_data(ref))  # fmt: skip
