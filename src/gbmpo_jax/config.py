"""Run configuration: shared defaults, `key=value` overrides, validation, diffs.

A config is a tree of frozen dataclasses. The sections the core takes are the core's own
static config classes, used as they are (no copies): ``rollout`` = `sampling.SamplingConfig`,
``objective`` = `losses.ObjectiveConfig`, ``optim`` = `optim.OptimConfig`, ``lora`` =
`lora.LoraConfig`; each checks its own fields against the registries when it is built. The
run-level sections (model, task, warmup, mesh, run) are defined and checked here.
Experiments (`experiments/<name>.py`) start from `Config()` and change only what differs
with `override` (all keys of one call and section are applied together, so fields that
constrain each other can be set in one call); nothing mutates a config after construction.
`validate` runs once at start for what spans sections, and every error names the key and
the fix.

Override syntax (CLI and `override`): dotted paths, values parsed by the field's type:
`objective.divergence=prob_l2 optim.lr=3e-5 lora.targets=q_proj,v_proj run.steps=10`.

Length: the whole config tree and its one validation pass (~410 lines) stay together so
every field and its check sit side by side.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field

from gbmpo_jax.rl.lora import LoraConfig
from gbmpo_jax.rl.losses import ObjectiveConfig
from gbmpo_jax.rl.optim import OptimConfig
from gbmpo_jax.sampler.sampling import SamplingConfig


@dataclass(frozen=True)
class ModelCfg:
    # HF directory, a .gguf file, "smollm2" (the GGUF that `make install` puts in the venv) or
    # "random" (a model initialised from `random_shape`, for smoke runs and benchmarks).
    path: str = "smollm2"
    tokenizer: str = ""  # "" = the model's own; "char" = the built-in character tokenizer
    random_shape: str = "tiny"  # see models.presets when path == "random"
    dtype: str = "float32"  # parameter dtype: float32 | bfloat16
    compute_dtype: str = "float32"  # matmul dtype; logits and log-probs are always fp32
    remat: bool = False
    # training forward/backward over the layers: scan (compile once per depth) or unrolled
    # (false: faster on CPU, longer compile); see models.config.ModelConfig.scan_layers
    scan_layers: bool = True


@dataclass(frozen=True)
class TaskCfg:
    name: str = "gsm8k"  # a key of data.TASKS
    source: str = ""  # hub id or local .jsonl/.parquet; "" = the task's default
    train_split: str = "inner_train"  # disjoint from eval_split (see data.py splits)
    eval_split: str = "validation"
    eval_size: int = 64  # held-out examples scored at each evaluation (fixed subset)
    max_prompt_len: int = 512  # prompts are left-truncated past this many tokens
    reward: str = "binary"  # binary | partial (code tasks: fraction of asserts passed)
    code_timeout_s: float = 5.0
    sandbox: str = "bwrap"  # bwrap | unsafe_rlimits_only
    options: tuple[tuple[str, str], ...] = ()  # task-specific knobs, e.g. (("digits", "2"),)
    # extra chat-template variables for every prompt (training, evaluation, ES), e.g.
    # enable_thinking:false for Qwen3; values true/false/ints are parsed (prompts.template_kwargs)
    chat_template_kwargs: tuple[tuple[str, str], ...] = ()
    # after the last step: greedy evaluation on this split ("" = none), logged as final/<split>_*;
    # final_eval_size 0 = the whole split
    final_eval_split: str = ""
    final_eval_size: int = 0


@dataclass(frozen=True)
class WarmupCfg:
    """Optional supervised warm-up on gold answers before RL (tiny-model demos only)."""

    steps: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    # "cosine": linear ramp over the first 5% of steps, cosine decay to 10% of lr at the end
    # (the tail at low lr is what turns a half-fitted model into a usable start); "constant".
    schedule: str = "cosine"
    # AdamW decoupled weight decay; 0.1 makes the demo model's plateau -> fitted transition
    # happen for every seed tried (without it seed 2 was still on the plateau at 1,200 steps).
    weight_decay: float = 0.1


@dataclass(frozen=True)
class MeshCfg:
    """Device mesh (see mesh.py). -1 on one axis = all remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    pop: int = 1  # ES population axis (meta.py); 1 for plain training
    num_devices: int = -1  # devices the mesh spans: -1 = all (global) devices
    # multi-host: "" = single process, "auto" = jax.distributed.initialize() from the
    # environment (TPU VMs, Slurm), or "HOST:PORT" with num_processes / process_id below
    coordinator: str = ""
    num_processes: int = 1
    process_id: int = 0


@dataclass(frozen=True)
class RunCfg:
    steps: int = 1000
    seed: int = 0
    log_every: int = 1
    eval_every: int = 100  # 0 = only at the start and the end
    save_every_steps: int = 100
    save_every_minutes: float = 30.0
    keep: int = 3
    max_skipped_in_row: int = 5
    export: bool = True  # write the final policy as a HF directory (LoRA merged)
    samples_to_log: int = 2
    # persistent XLA compilation cache: "auto" (~/.cache/gbmpo_jax/xla or
    # $GBMPO_COMPILE_CACHE), "off", or a directory (`scale.compile_cache`)
    compile_cache: str = "auto"


@dataclass(frozen=True)
class Config:
    name: str = "default"
    model: ModelCfg = field(default_factory=ModelCfg)
    task: TaskCfg = field(default_factory=TaskCfg)
    # the core's own config classes: the run's defaults are theirs, except where a run
    # differs from a library call (a training step samples groups of 4 for 2 prompts)
    rollout: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(group_size=4, prompts_per_step=2)
    )
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    warmup: WarmupCfg = field(default_factory=WarmupCfg)
    mesh: MeshCfg = field(default_factory=MeshCfg)
    run: RunCfg = field(default_factory=RunCfg)


class ConfigError(ValueError):
    """A config field is wrong; the message names the field and the fix."""


def _sections(cfg) -> dict[str, typing.Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _parse(value: str, tp, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if type(None) in args:  # X | None: "" / none -> None
        if value.strip().lower() in ("", "none", "null"):
            return None
        (tp,) = [a for a in args if a is not type(None)]
        return _parse(value, tp, key)
    try:
        if tp is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp in (int, float, str):
            return tp(value)
        if origin is tuple:
            args = typing.get_args(tp)
            items = [v for v in value.split(",") if v] if value else []
            if args and args[0] is str:
                return tuple(items)
            if args and typing.get_origin(args[0]) is tuple:  # tuple of (k, v) pairs
                bad = [kv for kv in items if ":" not in kv]
                if bad:
                    raise ConfigError(
                        f"{key}={value!r}: {bad[0]!r} must look like name:value; write the "
                        "whole list, e.g. digits:2,operations:+-"
                    )
                kinds = typing.get_args(args[0])
                return tuple(
                    tuple(t(x) for t, x in zip(kinds, kv.split(":", 1), strict=True))
                    for kv in items
                )
            if args and args[0] is int:
                return tuple(int(v) for v in items)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{key}={value!r}: cannot parse as {tp}") from e
    raise ConfigError(f"{key}: unsupported field type {tp}")


def override(cfg: Config, **changes) -> Config:
    """Returns a copy with dotted-path fields replaced: override(c, **{"optim.lr": 1e-5}).

    The keys of one section are applied in one step, so its class checks the fields together
    (e.g. rollout.max_new_tokens and rollout.min_new_tokens); a rejected value raises a
    ConfigError naming the key."""
    sections: dict[tuple[str, ...], dict[str, tuple[typing.Any, str]]] = {}
    for key, value in changes.items():
        *path, leaf = key.split(".")
        sections.setdefault(tuple(path), {})[leaf] = (value, key)
    for path, fields in sections.items():
        cfg = _set(cfg, list(path), fields, ".".join(path))
    return cfg


def _set(node, path, fields, section):
    names = {f.name for f in dataclasses.fields(node)}
    if path:
        head, full = path[0], next(iter(fields.values()))[1]
        if head not in names:
            raise ConfigError(
                f"unknown config key {full!r}: {head!r} is not one of {sorted(names)}"
            )
        child = getattr(node, head)
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"unknown config key {full!r}: {head!r} has no fields")
        return dataclasses.replace(node, **{head: _set(child, path[1:], fields, section)})
    hints = typing.get_type_hints(type(node))
    new = {}
    for name, (value, full) in fields.items():
        if name not in names:
            raise ConfigError(
                f"unknown config key {full!r}: {name!r} is not one of {sorted(names)}"
            )
        if dataclasses.is_dataclass(getattr(node, name)):
            raise ConfigError(f"{full!r} is a section; set one of its fields")
        if isinstance(value, str) and hints[name] is not str:
            value = _parse(value, hints[name], full)
        if isinstance(value, float) and not math.isfinite(value):  # inf / nan pass `> 0` checks
            raise ConfigError(f"{full}={value!r} is not a finite number")
        new[name] = value
    try:
        return dataclasses.replace(node, **new)
    except (ValueError, TypeError) as e:
        keys = ", ".join(f[1] for f in fields.values())
        prefix = f"{section}." if section else ""
        raise ConfigError(f"{prefix}{e} (setting {keys})") from None


def parse_overrides(args: list[str]) -> dict[str, str]:
    out = {}
    for a in args:
        if "=" not in a:
            raise ConfigError(f"override {a!r} must look like key=value (e.g. run.steps=10)")
        k, v = a.split("=", 1)
        out[k.strip()] = v
    return out


def to_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(d: dict) -> Config:
    def build(cls, data):
        hints = typing.get_type_hints(cls)
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            v = data[f.name]
            if dataclasses.is_dataclass(hints[f.name]):
                v = build(hints[f.name], v)
            elif typing.get_origin(hints[f.name]) is tuple:
                v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
            kw[f.name] = v
        return cls(**kw)

    return build(Config, d)


def diff(a: Config, b: Config) -> dict[str, tuple]:
    """Fields that differ, as {dotted.key: (a_value, b_value)}."""

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[prefix + k] = v
        return out

    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def _check(cond: bool, key: str, msg: str):
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _one_of(value, options, key):
    _check(value in options, key, f"{value!r} is not one of {sorted(options)}")


MAX_LR = 1.0  # the supervised warm-up's bound (optim.OptimConfig has its own)


def _check_finite(node, prefix: str = "") -> None:
    """Every float field must be finite: inf / nan pass `> 0` checks and fail much later."""
    for f in dataclasses.fields(node):
        v = getattr(node, f.name)
        if dataclasses.is_dataclass(v):
            _check_finite(v, f"{prefix}{f.name}.")
        elif isinstance(v, float):
            _check(math.isfinite(v), prefix + f.name, f"{v!r} is not a finite number")


def validate(cfg: Config) -> Config:
    """Checks the run-level sections and what spans sections, once at start; returns cfg
    unchanged or raises ConfigError. (rollout / objective / optim / lora check their own
    fields when they are built.)"""
    from gbmpo_jax import sft
    from gbmpo_jax.models import presets
    from gbmpo_jax.models.config import DTYPES
    from gbmpo_jax.tasks import data
    from gbmpo_jax.tasks.rewards import REWARD_MODES, SANDBOXES

    m, t, r, o, run, w = cfg.model, cfg.task, cfg.rollout, cfg.objective, cfg.run, cfg.warmup
    _check_finite(cfg)
    _one_of(m.dtype, DTYPES, "model.dtype")
    _one_of(m.compute_dtype, DTYPES, "model.compute_dtype")
    _check(bool(m.path), "model.path", "set a HF directory, a .gguf file, 'smollm2' or 'random'")
    if m.path == "random":
        _one_of(m.random_shape, presets.SHAPES, "model.random_shape")
    _one_of(t.name, data.TASKS, "task.name")
    _one_of(t.reward, REWARD_MODES, "task.reward")
    _one_of(t.sandbox, SANDBOXES, "task.sandbox")
    _check(t.max_prompt_len >= 8, "task.max_prompt_len", "must be >= 8")
    _check(t.eval_size >= 0, "task.eval_size", "must be >= 0 (0 = no held-out evaluation)")
    _check(t.final_eval_size >= 0, "task.final_eval_size", "must be >= 0 (0 = the whole split)")
    if t.final_eval_split:
        _one_of(t.final_eval_split, data.TASKS[t.name].splits, "task.final_eval_split")
    _check(r.group_size >= 2, "rollout.group_size", "group-relative advantages need >= 2")
    _check(not r.greedy, "rollout.greedy", "training samples; greedy decoding is for evaluation")
    _check(r.pad_token_id == 0, "rollout.pad_token_id", "is the tokenizer's; leave it unset")
    n_rows = r.prompts_per_step * r.group_size
    _check(n_rows % o.micro_batches == 0, "objective.micro_batches",
           f"must divide rollout.prompts_per_step x rollout.group_size = {n_rows}")  # fmt: skip
    _check(
        not o.max_completion_length or o.max_completion_length >= r.max_new_tokens,
        "objective.max_completion_length",
        f"must be 0 (= rollout.max_new_tokens) or >= rollout.max_new_tokens={r.max_new_tokens}",
    )
    _one_of(w.schedule, sft.SCHEDULES, "warmup.schedule")
    _check(w.weight_decay >= 0, "warmup.weight_decay", "must be >= 0")
    _check(w.steps >= 0, "warmup.steps", "must be >= 0 (0 = no warm-up)")
    _check(w.batch_size >= 1, "warmup.batch_size", "must be >= 1")
    _check(0 < w.lr <= MAX_LR, "warmup.lr", f"must be in (0, {MAX_LR:g}]")
    for axis in ("data", "fsdp", "tensor", "pop"):
        n = getattr(cfg.mesh, axis)
        _check(n == -1 or n >= 1, f"mesh.{axis}", "must be >= 1, or -1 for the remaining devices")
    _check(
        cfg.mesh.num_devices == -1 or cfg.mesh.num_devices >= 1,
        "mesh.num_devices",
        "must be >= 1, or -1 for all devices",
    )
    _check(
        [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, cfg.mesh.pop].count(-1) <= 1,
        "mesh",
        "at most one axis may be -1",
    )
    _check(run.steps >= 0, "run.steps", "must be >= 0")
    _check(0 <= run.seed < 2**32, "run.seed", "must be in [0, 2**32) (numpy and JAX seeds)")
    _check(run.log_every >= 1, "run.log_every", "must be >= 1")
    _check(run.eval_every >= 0, "run.eval_every", "must be >= 0")
    _check(run.save_every_steps >= 1, "run.save_every_steps", "must be >= 1")
    _check(run.keep >= 1, "run.keep", "must be >= 1")
    _check(run.max_skipped_in_row >= 1, "run.max_skipped_in_row", "must be >= 1")
    _check(bool(str(run.compile_cache).strip()), "run.compile_cache",
           "must be 'auto', 'off' or a directory")  # fmt: skip
    return cfg
