"""Device mesh, partition rules from logical axis names, and sharded jit of the step pieces.

Generic: this module knows no model, adapter or rollout; each layer exports the logical axes
of the arrays it owns and `rl.placement` puts them together.

Mesh: four named axes, in this order (outermost first, so `data` spans hosts/slices and
`tensor` the fastest links inside one host):

  pop     ES population members (meta loop; 1 for plain training)
  data    pure data parallelism: rows split, parameters replicated
  fsdp    rows split *and* parameters / optimizer state sharded (ZeRO-3 style)
  tensor  Megatron-style tensor parallelism: heads / kv_heads / mlp / vocab split

Batch rows are split over ("data", "fsdp") together (FSDP is data parallel for activations),
so a global batch of N rows needs N % (data * fsdp) == 0; every other batch axis is whole.

Each layer names the dimensions of the arrays it owns: `models.logical_axes` (parameters),
`lora.logical_axes` (adapters), `sampling.ROLLOUT_AXES` (rollout buffers); training batches
put rows on "batch". `RULES` maps a logical name to a mesh axis, a tuple of mesh axes, or
None (replicated); `shardings(names, shapes, mesh)` is the one names-to-sharding mapping. A
dimension whose size does not divide by the mesh axis size is replicated instead, logged once per (leaf, axis). A mesh axis is used
at most once per leaf (a later dimension asking for an axis already taken is replicated).
Optimizer state and LoRA adapters get the placement of the parameter they belong to, found
by tree path and shape (`place_by_path`); everything else (counters, divergence params) is
replicated.

Compilation uses classic GSPMD propagation (`jax.sharding.Mesh`, Auto axis types): the train
step, log-prob pass and rollout are plain `jax.jit`s (jax's own cache, one compilation per
input signature) with the state's shardings explicit and the shape-dependent layouts (rows
split when they divide, else replicated) pinned inside the program with sharding constraints.
Sharding never changes the maths: results equal the one-device run up to float reassociation.

Multi-host: every process builds the same global mesh from `jax.devices()`; each process
holds only its addressable shards. Host data (prompts, rewards) enters with
`global_batch_from_host_rows` and leaves with `host_local_rows` (see docs/SCALE_OUT.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

AXES: tuple[str, ...] = ("pop", "data", "fsdp", "tensor")
BATCH_AXES: tuple[str, ...] = ("data", "fsdp")

# Logical axis name -> mesh axis (None = replicated). The one table; pass `rules=` to override
# (e.g. {**RULES, "vocab": "fsdp"}) anywhere a function takes it.
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,  # rows of rollouts and training batches (FSDP is data parallel too)
    "layers": None,  # scanned over: sharding it would serialise the scan across devices
    "embed": "fsdp",  # hidden size: every matrix has it, so FSDP shards every matrix
    "vocab": "tensor",  # embedding rows / lm_head columns (logits split over tensor)
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "norm": None,  # [L, E] norm scales: tiny, replicated
}


class MeshError(ValueError):
    """The mesh config does not fit the devices or the shapes; the message names the fix."""


# --------------------------------------------------------------------------- building the mesh
def axis_sizes(mesh_cfg, n_devices: int) -> dict[str, int]:
    """{"pop", "data", "fsdp", "tensor"} sizes with the one -1 axis resolved; raises MeshError
    when the product is not `n_devices` (e.g. for `memory.estimate` in --dry-run)."""
    sizes = {a: int(getattr(mesh_cfg, a)) for a in AXES}
    free = [a for a, n in sizes.items() if n == -1]
    bad = [f"mesh.{a}={n}" for a, n in sizes.items() if n == 0 or n < -1]
    if bad or len(free) > 1:
        raise MeshError(
            f"{', '.join(bad) or 'mesh'}: sizes must be >= 1 with at most one -1 "
            f"(got {sizes}, free axes {free})"
        )
    fixed = math.prod(n for n in sizes.values() if n != -1)
    desc = " x ".join(f"{a}={n}" for a, n in sizes.items())
    if free:
        if n_devices % fixed:
            raise MeshError(
                f"mesh {desc}: the fixed axes need a multiple of {fixed} devices but there are "
                f"{n_devices}; change mesh.{'/'.join(a for a in AXES if a not in free)}"
            )
        sizes[free[0]] = n_devices // fixed
    elif fixed != n_devices:
        raise MeshError(
            f"mesh {desc} needs {fixed} devices but there are {n_devices}: make the product "
            f"equal {n_devices}, or set one axis to -1 (e.g. mesh.data=-1)"
        )
    return sizes


def setup(mesh_cfg, devices=None) -> Mesh:
    """Mesh with axes `AXES` over `devices` (default: all global devices), Auto axis types.

    Uses `mesh_utils.create_device_mesh` (topology-aware on TPU) and falls back to the plain
    device order where it cannot place the shape (CPU, odd GPU counts)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = axis_sizes(mesh_cfg, len(devices))
    shape = tuple(sizes[a] for a in AXES)
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Rows (axis 0) over ("data", "fsdp"); the other `ndim - 1` axes whole."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def num_row_shards(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_rows(n_rows: int, mesh: Mesh, what: str = "batch") -> None:
    k = num_row_shards(mesh)
    if n_rows % k:
        raise MeshError(
            f"{what} of {n_rows} rows does not split over data x fsdp = {k} devices: make "
            f"the rows a multiple of {k} (rollout.prompts_per_step / group_size, or the mesh)"
        )


# --------------------------------------------------------------------------- partition rules
_logged: set = set()


def spec_for(names, shape, mesh: Mesh, rules: Mapping | None = None, where: str = "") -> P:
    """PartitionSpec of one leaf from its logical axis `names` and `shape`."""
    rules = RULES if rules is None else rules
    if len(names) != len(shape):
        raise MeshError(f"{where}: logical axes {names} do not match shape {tuple(shape)}")
    used, out = set(), []
    for name, size in zip(names, shape, strict=True):
        axis = rules.get(name) if name is not None else None
        group = () if axis is None else (axis,) if isinstance(axis, str) else tuple(axis)
        bad = [a for a in group if a not in mesh.shape]
        if bad:
            raise MeshError(
                f"rules[{name!r}]={axis!r}: {bad[0]!r} is not a mesh axis {tuple(mesh.shape)}"
            )
        n = math.prod(mesh.shape[a] for a in group)
        if n == 1 or used & set(group):
            out.append(None)
            continue
        if size % n:
            key = (where, name, group)
            if key not in _logged:
                _logged.add(key)
                log.warning(
                    "%s: axis %r of size %d does not divide by mesh %s=%d; replicated",
                    where, name, size, "x".join(group), n,
                )  # fmt: skip
            out.append(None)
            continue
        used |= set(group)
        out.append(group[0] if len(group) == 1 else group)
    return P(*out)


def _is_names(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(a, str | None) for a in x)


def _is_shape(x) -> bool:
    return hasattr(x, "shape") or (isinstance(x, tuple) and all(isinstance(a, int) for a in x))


def specs(names, shapes, mesh: Mesh, rules: Mapping | None = None):
    """PartitionSpec pytree from a logical-names pytree (leaves: tuples of str | None, one per
    dimension) and a same-structure pytree of arrays, ShapeDtypeStructs or shape tuples."""
    flat, tree = jax.tree.flatten_with_path(names, is_leaf=_is_names)
    dims = [tuple(np.shape(s)) if hasattr(s, "shape") else s
            for s in jax.tree.leaves(shapes, is_leaf=_is_shape)]  # fmt: skip
    if len(dims) != len(flat):
        raise MeshError(f"{len(flat)} logical-name leaves but {len(dims)} shapes")
    out = [spec_for(n, d, mesh, rules, "/".join(map(str, _keys(p))))
           for (p, n), d in zip(flat, dims, strict=True)]  # fmt: skip
    return jax.tree.unflatten(tree, out)


def shardings(names, shapes, mesh: Mesh, rules: Mapping | None = None):
    """The one names-to-sharding mapping: NamedSharding pytree (see `specs`)."""
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s),
        specs(names, shapes, mesh, rules),
        is_leaf=lambda x: isinstance(x, P),
    )


def _keys(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def _flat_specs(names, shapes, mesh, rules) -> dict[tuple, tuple[tuple, P]]:
    """{key path: (shape, spec)} from a names pytree and a same-structure shapes pytree."""
    is_names = lambda x: isinstance(x, tuple)  # noqa: E731
    flat = jax.tree.flatten_with_path(names, is_leaf=is_names)[0]
    out = {}
    for (p, n), s in zip(flat, jax.tree.leaves(shapes), strict=True):
        k = _keys(p)
        out[k] = (tuple(s.shape), spec_for(n, s.shape, mesh, rules, "/".join(map(str, k))))
    return out


def place_by_path(tree, named, mesh: Mesh, rules: Mapping | None = None):
    """NamedSharding pytree for ``tree`` (e.g. a TrainState): ``named`` lists (names pytree,
    shapes pytree) pairs (the model's parameters, LoRA adapters, ...); a leaf of ``tree``
    whose key path ends with one of their paths and has its shape gets that placement (so
    the optimizer state follows its parameter), every other leaf is replicated."""
    table = {}
    for names, shapes in named:
        table.update(_flat_specs(names, shapes, mesh, rules))
    suffixes = sorted(table, key=len, reverse=True)

    def pick(path, leaf):
        keys, shape = _keys(path), tuple(np.shape(leaf))
        for suf in suffixes:
            if keys[-len(suf) :] == suf and table[suf][0] == shape:
                return NamedSharding(mesh, table[suf][1])
        return replicated(mesh)

    return jax.tree.map_with_path(pick, tree)


def per_device_bytes(tree) -> int:
    """Bytes of `tree` held by the first addressable device (after sharding)."""
    dev = jax.local_devices()[0]
    total = 0
    for x in jax.tree.leaves(tree):
        for s in x.addressable_shards:
            if s.device == dev:
                total += s.data.nbytes
    return total


# --------------------------------------------------------------------------- sharded jit
def batch_shardings(batch: Mapping, mesh: Mesh) -> dict:
    """Per-key shardings of a training batch dict: rows on "batch" (an error naming the key
    when they do not split); scalars (e.g. num_items_in_batch) replicated."""
    out = {}
    for k, v in batch.items():
        nd = np.ndim(v)
        if nd:
            check_rows(np.shape(v)[0], mesh, f"batch[{k!r}]")
        out[k] = batch_sharding(mesh, nd) if nd else replicated(mesh)
    return out


def jit_update(update_fn, state_sh, mesh: Mesh):
    """`update(state, batch, key) -> (state, metrics)` compiled with explicit shardings.

    `update_fn` is `train_step.make_update(..., jit=False)`. The state keeps `state_sh`
    (donated); batch rows over ("data", "fsdp") (pinned inside the program, so any batch
    layout compiles through the one `jax.jit`); the key and the metrics are replicated
    (metrics are global reductions)."""

    def program(state, batch, key):
        batch = {k: jax.lax.with_sharding_constraint(v, sh)
                 for (k, v), sh in zip(batch.items(), batch_shardings(batch, mesh).values(),
                                       strict=True)}  # fmt: skip
        return update_fn(state, batch, key)

    rep = replicated(mesh)
    return jax.jit(program, in_shardings=(state_sh, None, rep), out_shardings=(state_sh, rep),
                   donate_argnums=0)  # fmt: skip


def jit_logprobs(logprobs_fn, state_sh, mesh: Mesh):
    """`train_step.make_compute_logprobs(..., jit=False)` compiled with shardings:
    (state, input_ids, attention_mask, completion_len) -> three [N,T] row-sharded arrays."""
    rows = batch_sharding(mesh, 2)
    return jax.jit(
        logprobs_fn, static_argnums=3, in_shardings=(state_sh, rows, rows), out_shardings=rows
    )


# --------------------------------------------------------------------------- host data
def host_local_rows(global_array) -> np.ndarray:
    """This process's rows of a row-sharded global array, as numpy (in global row order).
    Rows replicated over `tensor` / `pop` are taken once."""
    shards = {}
    for s in global_array.addressable_shards:
        start = s.index[0].start or 0 if s.index else 0
        shards.setdefault(start, s.data)
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)], axis=0)


def host_row_range(n_rows: int, mesh: Mesh) -> tuple[int, int]:
    """[start, stop) of the global rows whose batch shards live on this process."""
    check_rows(n_rows, mesh)
    sh = batch_sharding(mesh)
    idx = sh.addressable_devices_indices_map((n_rows,))
    starts = [i[0].start or 0 for i in idx.values()]
    stops = [n_rows if i[0].stop is None else i[0].stop for i in idx.values()]
    return min(starts), max(stops)


def global_batch_from_host_rows(local, mesh: Mesh, n_rows: int):
    """Global row-sharded arrays from each process's own rows (a pytree of numpy arrays with
    the local rows `host_row_range(n_rows, mesh)`); scalars must be equal on all processes."""

    def one(x):
        x = np.asarray(x)
        if x.ndim == 0:
            return jax.make_array_from_process_local_data(replicated(mesh), x, ())
        return jax.make_array_from_process_local_data(
            batch_sharding(mesh, x.ndim), x, (n_rows, *x.shape[1:])
        )

    return jax.tree.map(one, local)
