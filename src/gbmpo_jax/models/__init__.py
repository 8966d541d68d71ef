"""Model layer: decoder-only transformers (Llama, Qwen2, Qwen3) as pure JAX functions.

Public API (contract in docs/DESIGN.md, "Model layer"):
  ModelConfig, SUPPORTED_MODEL_TYPES, Model, init_model, load_config, load_pretrained,
  save_pretrained, forward, apply (= lm_head o hidden), hidden, hidden_shared_prompt, lm_head,
  init_cache, positions_from_mask, logical_axes, load_tokenizer, smollm2_gguf_path. The GGUF -> HF converter is `gbmpo_jax.models.convert.convert`
  (CLI: ``python -m gbmpo_jax.models.convert --gguf PATH --out DIR``).
"""

from gbmpo_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from gbmpo_jax.models.model import (
    Model,
    forward,
    init_model,
    load_config,
    load_pretrained,
    save_pretrained,
    smollm2_gguf_path,
)
from gbmpo_jax.models.params import init_params, logical_axes
from gbmpo_jax.models.tokenizer import load_tokenizer
from gbmpo_jax.models.transformer import (
    apply,
    hidden,
    hidden_shared_prompt,
    init_cache,
    lm_head,
    positions_from_mask,
)

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "Model",
    "ModelConfig",
    "apply",
    "forward",
    "hidden",
    "hidden_shared_prompt",
    "init_cache",
    "init_model",
    "init_params",
    "load_config",
    "load_pretrained",
    "lm_head",
    "load_tokenizer",
    "logical_axes",
    "positions_from_mask",
    "save_pretrained",
    "smollm2_gguf_path",
]
