"""Run configuration: shared defaults, `key=value` overrides, validation, diffs.

A config is a tree of frozen dataclasses. Experiments (`experiments/<name>.py`) start from
`Config()` (the defaults below, one place) and change only what differs with `override`;
nothing mutates a config after construction. `validate` runs once at start and every error
names the field and the fix.

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
class RolloutCfg:
    prompts_per_step: int = 2
    group_size: int = 4
    max_new_tokens: int = 256
    min_new_tokens: int = 0
    temperature: float = 0.6
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0


@dataclass(frozen=True)
class ObjectiveCfg:
    advantage: str = "dr_grpo"  # grpo | dr_grpo | rloo
    # auto = the estimator's own (grpo: group, dr_grpo / rloo: none) | group | batch | none
    scale_rewards: str = "auto"
    divergence: str = "kl"  # a key of divergences.REGISTRY
    coef: float = 0.04  # lambda, the divergence weight
    loss_type: str = "dr_grpo"  # grpo | dr_grpo | bnpo | dapo
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    importance_sampling: str = "token"  # token | sequence
    mu: int = 1  # optimizer steps per generation batch
    mask_truncated_completions: bool = True
    micro_batches: int = 1  # gradient accumulation inside one jitted update
    # tokens per fused lm_head + log-softmax chunk of the log-prob passes (0 = full logits)
    logprob_chunk: int = 512
    mirror_params_path: str = ""  # .npz of neural-mirror coefficients (e.g. learned by ES)
    mirror_init: str = "reference"  # reference (uniform[0,0.01), seed 42) | random
    # TRL >= 1.x `use_bias_correction_kl`: the per-token divergence times the importance
    # ratio (see losses.py); off = TRL 0.23, the paper's reference
    use_bias_correction_kl: bool = False


@dataclass(frozen=True)
class OptimCfg:
    lr: float = 3e-5
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 1.0


@dataclass(frozen=True)
class LoraCfg:
    rank: int = 0  # 0 = full fine-tuning
    alpha: float = 0.0
    targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )


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


@dataclass(frozen=True)
class Config:
    name: str = "default"
    model: ModelCfg = field(default_factory=ModelCfg)
    task: TaskCfg = field(default_factory=TaskCfg)
    rollout: RolloutCfg = field(default_factory=RolloutCfg)
    objective: ObjectiveCfg = field(default_factory=ObjectiveCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    lora: LoraCfg = field(default_factory=LoraCfg)
    warmup: WarmupCfg = field(default_factory=WarmupCfg)
    mesh: MeshCfg = field(default_factory=MeshCfg)
    run: RunCfg = field(default_factory=RunCfg)


class ConfigError(ValueError):
    """A config field is wrong; the message names the field and the fix."""


def _sections(cfg) -> dict[str, typing.Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _parse(value: str, tp, key: str):
    origin = typing.get_origin(tp)
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
                return tuple(tuple(kv.split(":", 1)) for kv in items)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{key}={value!r}: cannot parse as {tp}") from e
    raise ConfigError(f"{key}: unsupported field type {tp}")


def override(cfg: Config, **changes) -> Config:
    """Returns a copy with dotted-path fields replaced: override(c, **{"optim.lr": 1e-5})."""
    for key, value in changes.items():
        cfg = _set(cfg, key.split("."), value, key)
    return cfg


def _set(node, path, value, full_key):
    names = {f.name: f for f in dataclasses.fields(node)}
    head = path[0]
    if head not in names:
        raise ConfigError(
            f"unknown config key {full_key!r}: {head!r} is not one of {sorted(names)}"
        )
    if len(path) == 1:
        hints = typing.get_type_hints(type(node))
        if dataclasses.is_dataclass(getattr(node, head)):
            raise ConfigError(f"{full_key!r} is a section; set one of its fields")
        if isinstance(value, str) and hints[head] is not str:
            value = _parse(value, hints[head], full_key)
        return dataclasses.replace(node, **{head: value})
    child = getattr(node, head)
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"unknown config key {full_key!r}: {head!r} has no fields")
    return dataclasses.replace(node, **{head: _set(child, path[1:], value, full_key)})


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


# Bounds past which a value is a typo rather than a choice (Adam lr > 1 diverges at once; a
# divergence weight of 1e3 swamps any reward).
MAX_LR = 1.0
MAX_COEF = 1e3


def _check_finite(node, prefix: str = "") -> None:
    """Every float field must be finite: inf / nan pass `> 0` checks and fail much later."""
    for f in dataclasses.fields(node):
        v = getattr(node, f.name)
        if dataclasses.is_dataclass(v):
            _check_finite(v, f"{prefix}{f.name}.")
        elif isinstance(v, float):
            _check(math.isfinite(v), prefix + f.name, f"{v!r} is not a finite number")


def validate(cfg: Config) -> Config:
    """Checks every field once at start; returns cfg unchanged or raises ConfigError."""
    from gbmpo_jax import advantages, data, divergences, losses

    m, t, r, o, op, lo, run = (
        cfg.model,
        cfg.task,
        cfg.rollout,
        cfg.objective,
        cfg.optim,
        cfg.lora,
        cfg.run,
    )
    _check_finite(cfg)
    _one_of(m.dtype, ("float32", "bfloat16"), "model.dtype")
    _one_of(m.compute_dtype, ("float32", "bfloat16"), "model.compute_dtype")
    _check(bool(m.path), "model.path", "set a HF directory, a .gguf file, 'smollm2' or 'random'")
    _one_of(t.name, data.TASKS, "task.name")
    _one_of(t.reward, ("binary", "partial"), "task.reward")
    _one_of(t.sandbox, ("bwrap", "unsafe_rlimits_only"), "task.sandbox")
    _check(t.max_prompt_len >= 8, "task.max_prompt_len", "must be >= 8")
    _check(t.eval_size >= 0, "task.eval_size", "must be >= 0 (0 = no held-out evaluation)")
    _check(t.final_eval_size >= 0, "task.final_eval_size", "must be >= 0 (0 = the whole split)")
    if t.final_eval_split:
        _one_of(t.final_eval_split, data.TASKS[t.name].splits, "task.final_eval_split")
    _check(r.prompts_per_step >= 1, "rollout.prompts_per_step", "must be >= 1")
    _check(r.group_size >= 2, "rollout.group_size", "group-relative advantages need >= 2")
    _check(r.max_new_tokens >= 1, "rollout.max_new_tokens", "must be >= 1")
    _check(
        0 <= r.min_new_tokens <= r.max_new_tokens,
        "rollout.min_new_tokens",
        "must be in [0, rollout.max_new_tokens]",
    )
    _check(r.temperature > 0, "rollout.temperature", "must be > 0 (greedy is for evaluation)")
    _check(0 < r.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
    _check(r.top_k >= 0, "rollout.top_k", "must be >= 0 (0 disables)")
    _check(0 <= r.min_p < 1, "rollout.min_p", "must be in [0, 1)")
    _check(r.repetition_penalty > 0, "rollout.repetition_penalty", "must be > 0")
    _one_of(o.advantage, advantages.REGISTRY, "objective.advantage")
    _one_of(o.scale_rewards, ("auto", "group", "batch", "none"), "objective.scale_rewards")
    _one_of(o.divergence, divergences.REGISTRY, "objective.divergence")
    _check(0 <= o.coef <= MAX_COEF, "objective.coef", f"must be in [0, {MAX_COEF:g}]")
    _one_of(o.loss_type, losses.AGGREGATIONS, "objective.loss_type")
    _check(0 <= o.epsilon_low < 1, "objective.epsilon_low", "must be in [0, 1)")
    _check(o.epsilon_high >= 0, "objective.epsilon_high", "must be >= 0")
    _one_of(o.importance_sampling, ("token", "sequence"), "objective.importance_sampling")
    _check(o.mu >= 1, "objective.mu", "must be >= 1")
    n_rows = r.prompts_per_step * r.group_size
    _check(
        o.micro_batches >= 1 and n_rows % o.micro_batches == 0,
        "objective.micro_batches",
        f"must divide prompts_per_step * group_size = {n_rows}",
    )
    _check(o.logprob_chunk >= 0, "objective.logprob_chunk", "must be >= 0 (0 = full logits)")
    _one_of(o.mirror_init, ("reference", "random"), "objective.mirror_init")
    _check(0 < op.lr <= MAX_LR, "optim.lr", f"must be in (0, {MAX_LR:g}]")
    _one_of(op.schedule, ("cosine", "linear", "constant"), "optim.schedule")
    _one_of(cfg.warmup.schedule, ("cosine", "constant"), "warmup.schedule")
    _check(cfg.warmup.weight_decay >= 0, "warmup.weight_decay", "must be >= 0")
    _check(0 <= op.warmup_ratio < 1, "optim.warmup_ratio", "must be in [0, 1)")
    _check(op.clip_norm >= 0, "optim.clip_norm", "must be >= 0 (0 disables)")
    _check(lo.rank >= 0, "lora.rank", "must be >= 0 (0 = full fine-tuning)")
    if lo.rank:
        _check(lo.alpha > 0, "lora.alpha", "must be > 0 when lora.rank > 0")
        _check(bool(lo.targets), "lora.targets", "name at least one projection")
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
    _check(cfg.warmup.steps >= 0, "warmup.steps", "must be >= 0 (0 = no warm-up)")
    _check(cfg.warmup.batch_size >= 1, "warmup.batch_size", "must be >= 1")
    _check(0 < cfg.warmup.lr <= MAX_LR, "warmup.lr", f"must be in (0, {MAX_LR:g}]")
    if m.path == "random":
        from gbmpo_jax import presets

        _one_of(m.random_shape, presets.SHAPES, "model.random_shape")
    _check(run.log_every >= 1, "run.log_every", "must be >= 1")
    _check(run.eval_every >= 0, "run.eval_every", "must be >= 0")
    _check(run.save_every_steps >= 1, "run.save_every_steps", "must be >= 1")
    _check(run.keep >= 1, "run.keep", "must be >= 1")
    _check(run.max_skipped_in_row >= 1, "run.max_skipped_in_row", "must be >= 1")
    return cfg
