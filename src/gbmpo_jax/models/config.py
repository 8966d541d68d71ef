"""ModelConfig: the static description of a decoder-only transformer, and HF config <-> ModelConfig.

`ModelConfig` is a frozen, hashable dataclass, so it can be passed to `jax.jit` as a static
argument. It covers three Hugging Face families:

* ``llama``  (Llama 2/3, SmolLM2; rope scaling ``linear`` or ``llama3``),
* ``qwen2``  (Qwen2 / Qwen2.5: bias on the q/k/v projections),
* ``qwen3``  (per-head RMSNorm on q and k before RoPE).

Deviations from the HF configs, on purpose:
1. Only SiLU-gated MLPs (``hidden_act == "silu"``) and full attention are supported; sliding
   windows, MLP bias, llama/qwen3 ``attention_bias`` (which also biases o_proj) and rope types
   other than default/linear/llama3 are rejected with a ValueError instead of being ignored.
   ``attention_bias`` and ``qk_norm`` follow from ``model_type`` (leave them None).
2. ``rope_scaling`` is stored as a sorted tuple of (key, value) pairs (hashable), without
   ``rope_theta`` (that is its own field).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "qwen2", "qwen3")
DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ROPE_TYPES: tuple[str, ...] = ("default", "linear", "llama3")
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def canonical_dtype(dtype: Any, field: str = "dtype") -> str:
    """Returns "float32" or "bfloat16" for a string or numpy/jax dtype; ValueError otherwise."""
    name = dtype if isinstance(dtype, str) else getattr(jnp.dtype(dtype), "name", str(dtype))
    name = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16"}.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"unknown {field} {dtype!r}: use one of {sorted(DTYPES)}")
    return name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static shape/numerics description of a decoder-only transformer (see DESIGN.md)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool | None = None
    qk_norm: bool | None = None
    max_position_embeddings: int = 4096
    compute_dtype: str = "float32"
    remat: bool = False
    # layer loop of the training forward/backward: a `lax.scan` over the stacked layers
    # (compile time independent of depth) or unrolled (False: faster steps on XLA:CPU,
    # measured 1.1-1.4x on the update; compile time grows with depth). Decode is always
    # unrolled (`unstack_layers`).
    scan_layers: bool = True
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {self.model_type!r}; "
                f"supported: {list(SUPPORTED_MODEL_TYPES)}"
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")
        # Qwen2 always has q/k/v bias and no q/k norm; Qwen3 always q/k norm; Llama neither
        # (HF's optional o_proj bias for llama/qwen3 is not supported).
        for name, want in (
            ("attention_bias", self.model_type == "qwen2"),
            ("qk_norm", self.model_type == "qwen3"),
        ):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, want)
            elif bool(value) != want:
                raise ValueError(
                    f"ModelConfig.{name}={value} is not supported for model_type "
                    f"{self.model_type!r} (must be {want}; leave it None for the default)"
                )
        object.__setattr__(
            self, "compute_dtype", canonical_dtype(self.compute_dtype, "compute_dtype")
        )
        eos = self.eos_token_id
        eos = () if eos is None else (int(eos),) if isinstance(eos, int) else tuple(map(int, eos))
        object.__setattr__(self, "eos_token_id", eos)
        if self.rope_scaling is not None:
            scaling = dict(self.rope_scaling)
            rope_type = scaling.get("rope_type")
            if rope_type not in ROPE_TYPES[1:]:
                raise ValueError(
                    f"ModelConfig.rope_scaling rope_type {rope_type!r} unsupported; use None "
                    f"(default) or one of {list(ROPE_TYPES[1:])}"
                )
            needed = ("factor",) + (_LLAMA3_KEYS[1:] if rope_type == "llama3" else ())
            missing = [k for k in needed if k not in scaling]
            if missing:
                raise ValueError(f"ModelConfig.rope_scaling ({rope_type}) lacks {missing}")
            object.__setattr__(self, "rope_scaling", tuple(sorted(scaling.items())))

    @property
    def dtype(self):
        """The compute dtype as a jnp dtype."""
        return DTYPES[self.compute_dtype]


def _rope_from_hf(d: dict) -> tuple[float, tuple | None]:
    """(rope_theta, rope_scaling) from a HF config dict (transformers 5 or 4 layout)."""
    params = dict(d.get("rope_parameters") or {})
    legacy = d.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
    scaling = {**legacy, **params}
    scaling.pop("rope_theta", None)
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    scaling.pop("type", None)
    rope_type = scaling.get("rope_type", "default")
    if rope_type not in ROPE_TYPES:
        raise ValueError(
            f"config.json rope type {rope_type!r} is not supported; supported: {list(ROPE_TYPES)}"
        )
    if rope_type == "default":
        return theta, None
    keep = ("rope_type",) + (_LLAMA3_KEYS if rope_type == "llama3" else ("factor",))
    return theta, tuple(sorted((k, scaling[k]) for k in keep if k in scaling))


def from_hf_dict(
    d: dict, compute_dtype: str = "float32", remat: bool = False, **overrides
) -> ModelConfig:
    """Builds a ModelConfig from a Hugging Face ``config.json`` dict; ValueError names the field."""
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unsupported model_type {model_type!r} in config.json; "
            f"supported: {list(SUPPORTED_MODEL_TYPES)}"
        )
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"config.json hidden_act {act!r} unsupported; only 'silu' is")
    if d.get("mlp_bias"):
        raise ValueError("config.json mlp_bias=true is not supported")
    if d.get("use_sliding_window"):
        raise ValueError(
            "config.json use_sliding_window=true is not supported (full attention only)"
        )
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"):
        if key not in d:
            raise ValueError(f"config.json lacks required field {key!r}")
    theta, scaling = _rope_from_hf(d)
    heads = int(d.get("num_attention_heads", 0))
    if heads <= 0:
        raise ValueError("config.json lacks a positive num_attention_heads")
    head_dim = d.get("head_dim") or d["hidden_size"] // heads
    if model_type != "qwen2" and d.get("attention_bias"):
        raise ValueError(f"config.json attention_bias=true is not supported for {model_type}")
    fields = dict(
        model_type=model_type,
        vocab_size=int(d["vocab_size"]),
        hidden_size=int(d["hidden_size"]),
        intermediate_size=int(d["intermediate_size"]),
        num_layers=int(d["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
        compute_dtype=compute_dtype,
        remat=remat,
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
        pad_token_id=d.get("pad_token_id"),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def to_hf_dict(config: ModelConfig, dtype: str) -> dict:
    """The ``config.json`` dict (transformers 5 layout) that reproduces ``config``."""
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        rope = {**dict(config.rope_scaling), "rope_theta": config.rope_theta}
    eos = list(config.eos_token_id)
    d = {
        "architectures": [_ARCHITECTURES[config.model_type]],
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": rope,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": config.pad_token_id,
        "dtype": canonical_dtype(dtype),
        "use_cache": True,
    }
    if config.model_type == "qwen2":
        d["use_sliding_window"] = False
    else:
        d["attention_bias"] = config.attention_bias
    if config.model_type == "llama":
        d["mlp_bias"] = False
    if config.model_type == "qwen3":
        d["use_sliding_window"] = False
    return d
