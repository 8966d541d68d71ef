"""Memory estimate of a run, per device, for `--dry-run` (before paying for an accelerator).

Counts, in bytes:
  params      the frozen weights in `model.dtype` (the reference, or the LoRA base), the
              float32 master copy of the trainable weights (full fine-tuning), and the
              policy cast back to `model.dtype` for the sampler when that is not float32;
  optimizer   float32 AdamW moments (2 x trainable parameters) plus the float32 gradient;
  kv_cache    2 (k and v) x layers x rows x (prompt + completion) x kv_heads x head_dim
              x compute-dtype bytes, rows = prompts_per_step x group_size;
  activations the training forward/backward of one micro-batch: per layer and token about
              (10 x hidden + 3 x intermediate) values kept for the backward pass (1 x hidden
              with remat), plus fp32 logits twice (logits and grad): [rows, T, vocab] with
              objective.logprob_chunk = 0, else one chunk of logprob_chunk tokens x vocab
              (auto, -1: the tokens `chunk_tokens_for` picks).

The log-prob passes' chunk budget lives here too (`chunk_tokens_for`, used by `rl.logprobs`).
Sharding divides params/optimizer by the fsdp x tensor axes and rows by the data axes.
"""

from __future__ import annotations

import math

import jax

from gbmpo_jax.models import params as model_params
from gbmpo_jax.models.config import ModelConfig

_BYTES = {"float32": 4, "bfloat16": 2}
# "auto" log-prob chunks (objective.logprob_chunk = -1): one chunk's fp32 logits
# [tokens, V] stay within this
LOGIT_CHUNK_BYTES = 256 * 2**20
AUTO = -1


def chunk_tokens_for(chunk_tokens: int, vocab: int) -> int:
    """Tokens per log-prob chunk: ``chunk_tokens`` itself when >= 0 (0 = no chunking), else
    (auto) the most tokens whose fp32 logits fit ``LOGIT_CHUNK_BYTES``."""
    if chunk_tokens >= 0:
        return chunk_tokens
    return max(1, LOGIT_CHUNK_BYTES // (4 * vocab))


def count_params(model_config: ModelConfig) -> int:
    shapes = model_params.param_shapes(model_config)
    return sum(
        math.prod(s) for s in jax.tree.leaves(shapes, is_leaf=lambda s: isinstance(s, tuple))
    )


def lora_params(model_config: ModelConfig, rank: int, targets) -> int:
    c = model_config
    e, f = c.hidden_size, c.intermediate_size
    dims = {
        "q_proj": (e, c.num_heads * c.head_dim),
        "k_proj": (e, c.num_kv_heads * c.head_dim),
        "v_proj": (e, c.num_kv_heads * c.head_dim),
        "o_proj": (c.num_heads * c.head_dim, e),
        "gate_proj": (e, f),
        "up_proj": (e, f),
        "down_proj": (f, e),
    }
    return c.num_layers * sum(rank * (dims[t][0] + dims[t][1]) for t in targets if t in dims)


def estimate(
    cfg, model_config: ModelConfig, *, data: int = 1, fsdp: int = 1, tensor: int = 1
) -> dict:
    """Per-device bytes of each component and their total (see the module docstring)."""
    c = model_config
    shard = fsdp * tensor
    n = count_params(c)
    pbytes = _BYTES[cfg.model.dtype]
    trainable = lora_params(c, cfg.lora.rank, cfg.lora.targets) if cfg.lora.rank else n
    sampler_copy = n * pbytes if (pbytes != 4 or cfg.lora.rank) else 0
    params = (n * pbytes + trainable * 4 + sampler_copy) / shard
    optimizer = trainable * (4 * 2 + 4) / shard
    rows = cfg.rollout.prompts_per_step * cfg.rollout.group_size / data
    seq = cfg.task.max_prompt_len + cfg.rollout.max_new_tokens
    cbytes = _BYTES[cfg.model.compute_dtype]
    kv = 2 * c.num_layers * rows * seq * c.num_kv_heads * c.head_dim * cbytes / tensor
    micro_rows = rows / cfg.objective.micro_batches
    per_tok = c.hidden_size if cfg.model.remat else 10 * c.hidden_size + 3 * c.intermediate_size
    chunk = chunk_tokens_for(cfg.objective.logprob_chunk, c.vocab_size)
    logit_rows = micro_rows * seq if not chunk else min(micro_rows * seq, chunk)
    acts = micro_rows * seq * c.num_layers * per_tok * cbytes
    acts += logit_rows * 2 * 4 * c.vocab_size / tensor
    out = {
        "num_params": n,
        "trainable_params": trainable,
        "master_weights_dtype": "float32",
        "params_bytes": params,
        "optimizer_bytes": optimizer,
        "kv_cache_bytes": kv,
        "activation_bytes": acts,
    }
    out["total_bytes"] = params + optimizer + max(kv, acts)  # rollout and update alternate
    return {k: v if isinstance(v, str) else int(v) for k, v in out.items()}


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
