"""Named shapes for randomly initialised models (smoke runs, the CPU demo, benchmarks).

`model_config(name, vocab_size)` returns a Qwen2-shaped `ModelConfig` (q/k/v bias, untied
embeddings). "3M" and "23.6M" are the benchmark shapes of issues #3 and #9 (their parameter
counts assume vocab 64); "tiny" keeps smoke runs' compile time low; "demo" is the CPU demo's.
The 0.5B / 1.7B / 4B shapes follow Qwen2.5-0.5B, Qwen3-1.7B and Qwen3-4B for GPU benchmarks;
"qwen3-tiny" is the paper experiments' `:rehearsal` model.
"""

from __future__ import annotations

from gbmpo_jax.models.config import ModelConfig

SHAPES: dict[str, dict] = {
    "tiny": dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64),
    "demo": dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=384),
    "3M": dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, intermediate_size=704),
    "23.6M": dict(
        hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1408
    ),
    "0.5B": dict(
        hidden_size=896,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        intermediate_size=4864,
        tie_word_embeddings=True,
    ),
    # The `:rehearsal` model: Qwen3's architecture (q/k norm, tied embeddings) at a width that
    # keeps the real tokenizer's 151,669-row embedding cheap on a CPU.
    "qwen3-tiny": dict(
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=128,
        model_type="qwen3",
        head_dim=16,
        tie_word_embeddings=True,
    ),
    "4B": dict(  # Qwen3-4B(-Instruct-2507)
        hidden_size=2560,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        intermediate_size=9728,
        model_type="qwen3",
        head_dim=128,
        tie_word_embeddings=True,
    ),
    "1.7B": dict(
        hidden_size=2048,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        intermediate_size=6144,
        model_type="qwen3",
        head_dim=128,
        tie_word_embeddings=True,
    ),
}


def model_config(name: str, vocab_size: int, **overrides) -> ModelConfig:
    if name not in SHAPES:
        raise ValueError(f"unknown model shape {name!r}; choose one of {sorted(SHAPES)}")
    shape = {"model_type": "qwen2", "tie_word_embeddings": False, **SHAPES[name]}
    shape.setdefault("head_dim", shape["hidden_size"] // shape["num_heads"])
    return ModelConfig(
        vocab_size=vocab_size,
        max_position_embeddings=8192,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        **{**shape, **overrides},
    )
