"""Where a run's arrays live on the mesh: parameters, LoRA adapters, the train state and the
rollout buffers, from the logical axes each layer exports (`models.logical_axes`,
`lora.logical_axes`, `sampling.ROLLOUT_AXES`) through the one generic names-to-sharding
mapping of `scale.mesh` (`mesh.shardings`, `mesh.place_by_path`, the RULES table)."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from gbmpo_jax import models
from gbmpo_jax.models import params as model_params
from gbmpo_jax.rl import lora as lora_lib
from gbmpo_jax.sampler import sampling
from gbmpo_jax.scale.mesh import place_by_path, replicated, shardings, spec_for, specs


def param_specs(model_config, mesh: Mesh, rules: Mapping | None = None, shapes=None) -> dict:
    """PartitionSpec pytree for the model params (structure of `models.logical_axes`)."""
    shapes = model_params.param_shapes(model_config) if shapes is None else shapes
    return specs(models.logical_axes(model_config), shapes, mesh, rules)


def param_shardings(model_config, mesh: Mesh, rules: Mapping | None = None) -> dict:
    """NamedSharding pytree for the model params (e.g. the rollout's `params_sh`)."""
    shapes = model_params.param_shapes(model_config)
    return shardings(models.logical_axes(model_config), shapes, mesh, rules)


def _structs(model_config) -> dict:
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, np.float32),
        model_params.param_shapes(model_config),
        is_leaf=lambda x: isinstance(x, tuple),
    )


def lora_names(model_config, lora_cfg: lora_lib.LoraConfig) -> dict:
    """Logical axes of the LoRA adapter pytree (LoRA owns the rule: `lora.logical_axes`)."""
    return lora_lib.logical_axes(
        models.logical_axes(model_config), _structs(model_config), lora_cfg
    )


def state_shardings(state, model_config, mesh: Mesh, rules=None, lora_cfg=None):
    """NamedSharding pytree for a `train_step.TrainState` (or any pytree holding params,
    adapters and optimizer state): a leaf whose key path ends with a parameter's (or, given
    `lora_cfg`, an adapter's) path and has its shape gets that placement; every other leaf
    (step counters, divergence params, scalars) is replicated."""
    base = _structs(model_config)
    named = [(models.logical_axes(model_config), base)]
    if lora_cfg is not None:
        adapters = jax.eval_shape(lambda: lora_lib.init(jax.random.key(0), base, lora_cfg))
        named.append((lora_names(model_config, lora_cfg), adapters))
    return place_by_path(state, named, mesh, rules)


def shard_state(state, model_config, mesh: Mesh, rules=None, lora_cfg=None):
    """(state placed on the mesh, its sharding pytree)."""
    sh = state_shardings(state, model_config, mesh, rules, lora_cfg)
    return jax.device_put(state, sh), sh


def _rows_or_replicated(x, mesh: Mesh):
    """Rows split over the batch axes when they divide, else replicated (logged at trace)."""
    from jax.sharding import NamedSharding

    names = ("batch",) + (None,) * (x.ndim - 1)
    return NamedSharding(mesh, spec_for(names, x.shape, mesh, where="rollout rows"))


def jit_rollout(mesh: Mesh, params_sh):
    """A drop-in for `sampling.generate(model, prompt_ids [B,P], prompt_mask [B,P], key,
    config) -> Rollout` that runs `sampling.rollout` jitted with the params at `params_sh`
    (as the caller placed them) and rows on "batch" (`sampling.ROLLOUT_AXES`). Prompts and the
    N = B x G output rows are row-sharded when they divide over data x fsdp, else replicated
    (each device then prefills every prompt; logged once per compilation)."""

    def program(model, prompt_ids, prompt_mask, key, config: sampling.SamplingConfig):
        params = jax.lax.with_sharding_constraint(model.params, params_sh)
        prompt_ids, prompt_mask = (
            jax.lax.with_sharding_constraint(x, _rows_or_replicated(x, mesh))
            for x in (prompt_ids, prompt_mask)
        )
        model = models.Model(model.config, params)
        out = sampling.rollout(model, prompt_ids, prompt_mask, key, config)
        out_sh = shardings(sampling.ROLLOUT_AXES, out, mesh)
        return jax.tree.map(jax.lax.with_sharding_constraint, out, out_sh)

    return jax.jit(program, static_argnums=4, in_shardings=(None, None, None, replicated(mesh)))
