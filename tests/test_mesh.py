"""mesh.py: the sharded train step and rollout equal the one-device run; placement rules.

8 simulated CPU devices (conftest). Tiny Qwen2-shaped model (4 heads, 2 kv heads, vocab 64)
so tensor=2 divides heads, kv_heads, mlp and vocab.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gbmpo_jax import models
from gbmpo_jax.config import MeshCfg
from gbmpo_jax.models import presets
from gbmpo_jax.rl import divergences, lora, placement
from gbmpo_jax.rl.optim import OptimConfig, make_optimizer
from gbmpo_jax.rl.train_step import init_state, make_compute_logprobs, make_update, step_config
from gbmpo_jax.sampler import sampling
from gbmpo_jax.scale import mesh

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]
# CI (2 loaded cores) runs the mesh that uses every axis; the others with `pytest -m slow`.
MESH_PARAMS = [
    pytest.param(s, marks=() if s == (2, 2, 2) else pytest.mark.slow, id="d{}-f{}-t{}".format(*s))
    for s in MESHES
]
N, PL, T = 16, 6, 4  # rows, prompt length, completion length


def problem(vocab=64, lora_cfg=None):
    """(model_config, host state, host batch, update_fn unjitted): deterministic."""
    mc = presets.model_config("tiny", vocab_size=vocab)
    model = models.init_model(mc, jax.random.key(0))
    opt = make_optimizer(OptimConfig(lr=1e-2, schedule="constant", warmup_ratio=0.0))
    div = divergences.get("kl")
    # dr_grpo normalised by L_max = 256 (the default before L_max = T): small, comparable steps
    cfg = step_config(group_size=4, micro_batches=2, lora=lora_cfg, max_completion_length=256)
    state = init_state(model.params, opt, div.init_params(jax.random.key(1)), 0.04, cfg,
                       key=jax.random.key(2))  # fmt: skip
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab, (N, PL + T)).astype(np.int32)
    am = np.ones((N, PL + T), np.int32)
    am[::3, :2] = 0  # some left padding
    cm = np.ones((N, T), np.int32)
    cm[1::4, 2:] = 0
    batch = dict(
        input_ids=ids,
        attention_mask=am,
        completion_mask=cm,
        advantages=rng.normal(size=N).astype(np.float32),
        old_logp=(-2.0 + 0.1 * rng.normal(size=(N, T))).astype(np.float32),
        ref_logp=(-2.0 + 0.1 * rng.normal(size=(N, T))).astype(np.float32),
    )
    apply_fn = lambda p, i, m: models.apply(p, mc, i, models.positions_from_mask(m), m)[0]  # noqa: E731
    update = make_update(apply_fn, div, opt, cfg, jit=False)
    return mc, jax.device_get(state), batch, update


def make_mesh(shape):
    data, fsdp, tensor = shape
    return mesh.setup(MeshCfg(data=data, fsdp=fsdp, tensor=tensor))


@pytest.fixture(scope="module")
def full():
    mc, state, batch, update = problem()
    dev = jax.devices()[0]
    ref_state, ref_m = jax.jit(update)(jax.device_put(state, dev), batch, jax.random.key(3))
    return mc, state, batch, update, jax.device_get((ref_state, ref_m))


def assert_close(a, b, atol=1e-5):
    for (p, x), y in zip(jax.tree.flatten_with_path(a)[0], jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5, err_msg=jax.tree_util.keystr(p)
        )


@pytest.mark.parametrize("shape", MESH_PARAMS)
def test_train_step_matches_one_device(full, shape):
    mc, state, batch, update, (ref_state, ref_m) = full
    m = make_mesh(shape)
    st, sh = placement.shard_state(state, mc, m)
    step = mesh.jit_update(update, sh, m)
    new, metrics = step(st, batch, jax.random.key(3))
    assert new.params["layers"]["q"].sharding == sh.params["layers"]["q"]
    assert_close(jax.device_get(new.params), ref_state.params)
    assert_close(jax.device_get(new.opt_state), ref_state.opt_state)
    assert_close(jax.device_get(metrics), ref_m, atol=1e-4)
    assert int(new.step) == 1
    if shape == (2, 2, 2):  # the log-prob pass, sharded, on the updated state
        t = batch["completion_mask"].shape[1]
        lp_fn = make_compute_logprobs(lambda p, i, a: models.apply(
            p, mc, i, models.positions_from_mask(a), a)[0], step_config(micro_batches=2))  # fmt: skip
        want = lp_fn(jax.device_put(ref_state, jax.devices()[0]), batch["input_ids"],
                     batch["attention_mask"], t)  # fmt: skip
        got = mesh.jit_logprobs(lp_fn, sh, m)(new, batch["input_ids"], batch["attention_mask"], t)
        assert got[0].sharding.spec == P(("data", "fsdp"), None)
        assert_close(jax.device_get(got), jax.device_get(want))


@pytest.mark.parametrize("step", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_lora_state_placement(step):
    lcfg = lora.LoraConfig(rank=2, alpha=2.0)
    mc, state, batch, update = problem(lora_cfg=lcfg)
    m = make_mesh((2, 2, 2))
    st, sh = placement.shard_state(state, mc, m, lora_cfg=lcfg)
    q = sh.params["layers"]["q"]
    assert q["lora_a"].spec == P(None, "fsdp", None)  # [L, E, r]: E over fsdp
    assert q["lora_b"].spec == P(None, None, "tensor")  # [L, r, H*D]: heads over tensor
    adam_mu = sh.opt_state[1][0].mu  # clip -> adamw (scale_by_adam) state
    assert adam_mu["layers"]["down"]["lora_a"].spec == P(None, "tensor", None)
    assert sh.frozen["layers"]["gate"].spec == P(None, "fsdp", "tensor")
    assert sh.step.spec == P()
    if not step:
        return
    ref, _ = jax.device_get(jax.jit(update)(state, batch, jax.random.key(3)))
    new, _ = mesh.jit_update(update, sh, m)(st, batch, jax.random.key(3))
    assert_close(jax.device_get(new.params), ref.params)


@pytest.mark.parametrize("shape", MESH_PARAMS)
def test_rollout_matches_one_device(shape):
    mc = presets.model_config("tiny", vocab_size=64)
    model = models.init_model(mc, jax.random.key(0))
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 64, (8, 5)).astype(np.int32)
    am = np.ones_like(ids)
    am[::2, :2] = 0
    sc = sampling.SamplingConfig(max_new_tokens=4, group_size=2, temperature=1.0,
                                 stop_token_ids=(3,), pad_token_id=0)  # fmt: skip
    key = jax.random.key(7)
    ref = jax.device_get(sampling.generate(model, ids, am, key, sc))
    m = make_mesh(shape)
    params_sh = placement.param_shardings(mc, m)
    gen = placement.jit_rollout(m, params_sh)  # drop-in for sampling.generate
    out = gen(models.Model(mc, jax.device_put(model.params, params_sh)), ids, am, key, sc)
    rows = NamedSharding(m, P(("data", "fsdp"), None))  # rows split over data x fsdp
    assert out.tokens.sharding.is_equivalent_to(rows, 2)
    out = jax.device_get(out)
    np.testing.assert_array_equal(out.tokens, ref.tokens, err_msg=str(shape))
    np.testing.assert_array_equal(out.mask, ref.mask)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
    if shape == (8, 1, 1):  # 4 prompts on 8 devices: prompts replicated, 8 output rows split
        ref4 = jax.device_get(sampling.generate(model, ids[:4], am[:4], key, sc))
        out4 = gen(models.Model(mc, jax.device_put(model.params, params_sh)), ids[:4], am[:4],
                   key, sc)  # fmt: skip
        assert out4.tokens.sharding.is_equivalent_to(rows, 2)
        np.testing.assert_array_equal(jax.device_get(out4.tokens), ref4.tokens)


def test_param_bytes_shrink_with_fsdp():
    mc, state, _, _ = problem()
    total = sum(x.nbytes for x in jax.tree.leaves(state.params))
    specs = placement.param_specs(mc, mesh.setup(MeshCfg(data=1, fsdp=8)))
    is_spec = lambda x: isinstance(x, P)  # noqa: E731
    sharded = sum(
        x.nbytes
        for x, s in zip(
            jax.tree.leaves(state.params), jax.tree.leaves(specs, is_leaf=is_spec), strict=True
        )
        if "fsdp" in s
    )
    assert sharded > 0.9 * total  # every matrix has an "embed" axis; norms/biases replicated
    seen = {}
    for fsdp in (1, 2, 4, 8):
        m = mesh.setup(MeshCfg(data=-1, fsdp=fsdp))
        placed, _ = placement.shard_state(state, mc, m)
        got = mesh.per_device_bytes(placed.params)
        assert got == sharded // fsdp + (total - sharded)
        seen[fsdp] = got
    assert seen[8] < seen[4] < seen[2] < seen[1] == total


def test_axis_sizes_and_errors():
    assert mesh.axis_sizes(MeshCfg(data=-1, fsdp=2, tensor=2), 8) == dict(
        pop=1, data=2, fsdp=2, tensor=2
    )
    assert mesh.axis_sizes(MeshCfg(data=2, fsdp=-1), 8)["fsdp"] == 4
    with pytest.raises(mesh.MeshError, match=r"needs 12 devices but there are 8"):
        mesh.setup(MeshCfg(data=3, fsdp=4, tensor=1))
    with pytest.raises(mesh.MeshError, match="multiple of 3"):
        mesh.axis_sizes(MeshCfg(data=-1, fsdp=3), 8)
    with pytest.raises(mesh.MeshError, match="at most one -1"):
        mesh.axis_sizes(MeshCfg(data=-1, fsdp=-1), 8)
    m = make_mesh((8, 1, 1))
    with pytest.raises(mesh.MeshError, match="12 rows does not split over data x fsdp = 8"):
        mesh.check_rows(12, m)
    with pytest.raises(mesh.MeshError, match="not a mesh axis"):
        mesh.spec_for(("embed",), (32,), m, {"embed": "model"})


def test_rules_override_and_fallback(caplog):
    m = make_mesh((2, 2, 2))
    mc = presets.model_config("tiny", vocab_size=63)  # 63 does not divide by tensor=2
    with caplog.at_level(logging.WARNING, logger="gbmpo_jax.scale.mesh"):
        specs = placement.param_specs(mc, m)
        placement.param_specs(mc, m)
    assert specs["embed"] == P(None, "fsdp")
    assert specs["lm_head"] == P("fsdp", None)
    assert specs["layers"]["q"] == P(None, "fsdp", "tensor", None)
    assert sum("does not divide" in r.message for r in caplog.records) == 2  # embed, lm_head
    custom = placement.param_specs(mc, m, {**mesh.RULES, "embed": None, "mlp": "fsdp"})
    assert custom["layers"]["down"] == P(None, "fsdp", None)
    # one mesh axis at most once per leaf: vocab asks for fsdp too, embed already took it
    dup = placement.param_specs(mc, m, {**mesh.RULES, "vocab": "fsdp"})
    assert dup["lm_head"] == P("fsdp", None)


def test_host_rows_roundtrip_single_process():
    m = make_mesh((2, 2, 2))
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    assert mesh.host_row_range(16, m) == (0, 16)
    g = mesh.global_batch_from_host_rows({"x": x, "n": np.float32(5)}, m, 16)
    assert g["x"].sharding.spec == P(("data", "fsdp"), None)
    np.testing.assert_array_equal(mesh.host_local_rows(g["x"]), x)
    assert float(g["n"]) == 5.0
    assert float(jnp.sum(g["x"])) == float(x.sum())


def test_one_names_to_sharding_mapping_for_every_layer():
    """Rollout buffers (sampling), adapters (lora) and params (models) name their own axes;
    mesh.shardings maps any of them. "batch" spans data x fsdp, replicated when rows do not
    divide."""
    m = make_mesh((2, 2, 2))
    n, t = 8, 3
    bufs = sampling.Rollout(*(np.zeros((n, t)) if len(a) == 2 else np.zeros(n)
                              for a in sampling.ROLLOUT_AXES))  # fmt: skip
    sh = mesh.shardings(sampling.ROLLOUT_AXES, bufs, m)
    assert sh.tokens.spec == P(("data", "fsdp"), None) and sh.lengths.spec == P(("data", "fsdp"))
    odd = mesh.shardings(sampling.ROLLOUT_AXES, jax.tree.map(lambda x: x[:6], bufs), m)
    assert odd.tokens.spec == P(None, None)  # 6 rows over 4 devices: replicated
    mc = presets.model_config("tiny", vocab_size=64)
    cfg = lora.LoraConfig(rank=2, alpha=2.0, targets=("q_proj",))
    names = placement.lora_names(mc, cfg)
    assert names["layers"]["q"]["lora_a"] == ("layers", "embed", None)
    assert names["layers"]["q"]["lora_b"] == ("layers", None, "heads")
