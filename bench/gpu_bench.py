"""GPU benchmark: train-step MFU and rollout tokens/s against the HBM roofline (bf16).

Random-weight Qwen-shaped models from `presets` ("0.5B": Qwen2.5-0.5B, "1.7B": Qwen3-1.7B;
vocab 151,936), 4 prompts of 64 tokens x G samples with exactly ``new_tokens`` new tokens.

  rollout  `sampling.generate` on bf16 weights (bf16 KV cache). Decode is memory bound: one
           step reads every weight once plus the KV cache filled so far, so the roofline is
           tokens/s <= rows / ((weight bytes + mean KV bytes) / HBM bandwidth), the bandwidth
           measured here (device-to-device copy, bytes read + written).
  train    `make_update` (mu = 1, dr_grpo, KL beta 0.04, AdamW) on fp32 master weights with
           bf16 compute, micro-batched; MFU = 6 * matmul params * tokens (+ attention, x3 of
           the forward) / time / bf16 matmul peak measured here (8192^3 jnp matmul).

Every case appends to the JSON file as soon as it finishes (a timeout keeps what is done).
``--dry-run`` runs the same code on CPU with shape "tiny", vocab 64, G=2, 8 new tokens, to
check the script where no GPU is at hand. Usage: ``bash bench/gpu.sh`` (on the GPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from gbmpo_jax import models
from gbmpo_jax.models import presets
from gbmpo_jax.rl import divergences
from gbmpo_jax.rl.optim import OptimConfig, make_optimizer
from gbmpo_jax.rl.train_step import init_state, make_update, step_config
from gbmpo_jax.sampler import sampling

PROMPTS, PROMPT_LEN, QWEN_VOCAB, EOS, PAD = 4, 64, 151_936, 1, 0


def hbm_bandwidth(nbytes: int, reps: int = 5) -> float:
    """Bytes/s of a device-to-device copy (read + write counted), best of ``reps``."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    f = jax.jit(lambda a: a * 1.0001)
    f(x).block_until_ready()
    best = min(common.timed(lambda: f(x).block_until_ready()) for _ in range(reps))
    return 2 * x.size * 4 / best


def _config(shape: str, vocab: int):
    return presets.model_config(
        shape, vocab, compute_dtype="bfloat16", eos_token_id=(EOS,), pad_token_id=PAD
    )


def _apply_fn(cfg):
    def apply_fn(params, input_ids, attention_mask):
        pos = models.positions_from_mask(attention_mask)
        return models.apply(params, cfg, input_ids, pos, attention_mask)[0]

    return apply_fn


def _prompts(vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return sampling.pad_prompts(rng.integers(2, vocab, size=(PROMPTS, PROMPT_LEN)).tolist(), PAD)


def rollout_case(cfg, group: int, new_tokens: int, reps: int, bw: float) -> dict:
    model = models.init_model(cfg, jax.random.key(0), dtype="bfloat16")
    ids, mask = _prompts(cfg.vocab_size)
    scfg = sampling.SamplingConfig(new_tokens, group_size=group, min_new_tokens=new_tokens,
                                   stop_token_ids=(EOS,), pad_token_id=PAD)  # fmt: skip
    keys = iter(jax.random.split(jax.random.key(1), reps + 1))
    run = lambda: jax.block_until_ready(sampling.generate(model, ids, mask, next(keys), scfg))  # noqa: E731
    first = common.timed(run)
    times = [common.timed(run) for _ in range(reps)]
    rows = PROMPTS * group
    st = common.stats(times)
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(model.params))
    weight_bytes -= cfg.vocab_size * cfg.hidden_size * 2 * (not cfg.tie_word_embeddings)  # lookup
    kv_per_tok = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2  # bf16 k and v
    mean_ctx = ids.shape[1] + new_tokens / 2
    step_bytes = weight_bytes + rows * kv_per_tok * mean_ctx
    roofline = rows * bw / step_bytes
    tok_s = rows * new_tokens / st["median"]
    return {
        "rows": rows, "new_tokens": new_tokens, "compile_plus_first_s": round(first, 3),
        "steady_s": st, "tokens_per_s": round(tok_s, 1),
        "hbm_roofline_tokens_per_s": round(roofline, 1),
        "fraction_of_hbm_roofline": round(tok_s / roofline, 3),
        "weight_gb": round(weight_bytes / 1e9, 3),
    }  # fmt: skip


def train_case(cfg, group: int, new_tokens: int, reps: int, peak: float, micro_rows: int) -> dict:
    rows, seq = PROMPTS * group, PROMPT_LEN + new_tokens
    micro = max(1, rows // micro_rows)
    step_cfg = step_config(loss_type="dr_grpo", max_completion_length=new_tokens,
                           mask_truncated_completions=False, group_size=group,
                           micro_batches=micro)  # fmt: skip
    div = divergences.get("kl")
    opt = make_optimizer(
        OptimConfig(lr=1e-6, schedule="constant", warmup_ratio=0.0), total_steps=100
    )
    params = models.init_model(cfg, jax.random.key(0), dtype="float32").params
    state = init_state(params, opt, div.init_params(jax.random.key(2)), 0.04, step_cfg)
    del params
    update = make_update(_apply_fn(cfg), div, opt, step_cfg)
    rng = np.random.default_rng(3)
    batch = {
        "input_ids": jnp.asarray(rng.integers(2, cfg.vocab_size, size=(rows, seq)), jnp.int32),
        "attention_mask": jnp.ones((rows, seq), jnp.int32),
        "completion_mask": jnp.ones((rows, new_tokens), jnp.int32),
        "old_logp": jnp.full((rows, new_tokens), -11.9, jnp.float32),
        "ref_logp": jnp.full((rows, new_tokens), -11.9, jnp.float32),
        "advantages": jnp.asarray(rng.standard_normal(rows), jnp.float32),
    }
    key = jax.random.key(4)
    holder = {"state": state}

    def run():
        holder["state"], m = update(holder["state"], batch, key)
        jax.block_until_ready(m)

    first = common.timed(run)
    times = [common.timed(run) for _ in range(reps)]
    st = common.stats(times)
    flops = 3 * common.seq_forward_flops(cfg, rows, seq)
    return {
        "rows": rows, "seq_len": seq, "micro_batches": micro,
        "compile_plus_first_s": round(first, 3), "steady_s": st,
        "tokens_per_s": round(rows * seq / st["median"], 1),
        "tflop_per_s": round(flops / st["median"] / 1e12, 2),
        "mfu": round(flops / st["median"] / peak, 3),
    }  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file (rewritten after every case)")
    ap.add_argument("--shapes", default="0.5B,1.7B")
    ap.add_argument("--groups", default="8,32", help="G values (rows = 4 prompts x G)")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--micro-rows", type=int, default=16, help="rows per train micro-batch")
    ap.add_argument("--dry-run", action="store_true", help="CPU check: tiny shape, vocab 64")
    a = ap.parse_args(argv)
    shapes, groups = a.shapes.split(","), [int(g) for g in a.groups.split(",")]
    vocab, new_tokens, mm_n = QWEN_VOCAB, a.new_tokens, 8192
    if a.dry_run:
        shapes, groups, vocab, new_tokens, mm_n = ["tiny"], [2], 64, 8, 256
    elif jax.default_backend() != "gpu":
        print(f"gpu_bench: backend is {jax.default_backend()!r}, not gpu (use --dry-run on CPU)",
              file=sys.stderr)  # fmt: skip
        return 2
    out = pathlib.Path(a.out)
    doc = {"machine": common.machine(), "dry_run": a.dry_run, "cases": []}
    doc["machine"]["device_kind"] = jax.devices()[0].device_kind
    doc["bf16_matmul_peak_tflop_per_s"] = round(
        common.matmul_peak(mm_n, reps=5, dtype="bfloat16") / 1e12, 2
    )
    bw = hbm_bandwidth(2**30 if not a.dry_run else 2**22)
    doc["hbm_gb_per_s"] = round(bw / 1e9, 1)
    out.write_text(json.dumps(doc, indent=2))
    peak = doc["bf16_matmul_peak_tflop_per_s"] * 1e12
    for shape in shapes:
        cfg = _config(shape, vocab)
        for g in groups:
            case = {"shape": shape, "group": g,
                    "matmul_params_m": round(common.matmul_params(cfg) / 1e6, 1)}  # fmt: skip
            t0 = time.perf_counter()
            jobs = {
                "rollout": (rollout_case, (cfg, g, new_tokens, a.reps, bw)),
                "train_step": (train_case, (cfg, g, new_tokens, a.reps, peak, a.micro_rows)),
            }
            for name, (fn, fn_args) in jobs.items():
                try:
                    case[name] = fn(*fn_args)
                except Exception as e:  # noqa: BLE001 - OOM on one case must not lose the rest
                    case[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
            case["wall_s"] = round(time.perf_counter() - t0, 1)
            doc["cases"].append(case)
            out.write_text(json.dumps(doc, indent=2))
            print(json.dumps(case), flush=True)
    print(json.dumps(doc, indent=2))
    failed = any("error" in c.get(k, {}) for c in doc["cases"] for k in ("rollout", "train_step"))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    sys.exit(main())
