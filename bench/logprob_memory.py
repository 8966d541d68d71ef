"""Compiled temp memory of the log-prob passes at Qwen3's vocabulary: full logits vs chunked.

For each model shape, the reference pass (`make_compute_logprobs(policy=False)`) and the
update (`make_update`, mu = 1, dr_grpo, KL, AdamW) are lowered and compiled for abstract
inputs (nothing is allocated or run) with ``logprob_chunk = 0`` (the full [N,T,V] fp32 logits,
the path before issue 16) and with the default chunk; ``memory_analysis().temp_size_in_bytes``
is XLA's peak of the buffers the program allocates beyond its arguments and outputs.

Default workload (issue 16): 32 rows x (64 prompt + 256 completion) tokens, vocabulary
151,669 (the Qwen3 tokenizer), one micro-batch. Shapes: "qwen3-tiny" (a 64-wide trunk, so the
logits dominate) and "1.7B" (Qwen3-1.7B's trunk, with remat as a real run would use).

Usage: ``python -m bench.logprob_memory [--shapes qwen3-tiny,1.7B] [--rows 32] [--new 256]``.
Runs on any backend; the numbers are the compiler's, for that backend.
"""

from __future__ import annotations

import argparse
import json

QWEN3_VOCAB = 151_669


def temp_bytes(shape: str, chunk: int, rows: int, prompt: int, new: int) -> dict:
    import jax
    import jax.numpy as jnp

    from gbmpo_jax import models, policy
    from gbmpo_jax.models import presets
    from gbmpo_jax.rl import divergences
    from gbmpo_jax.rl import train_step as ts
    from gbmpo_jax.rl.optim import OptimConfig, make_optimizer

    mc = presets.model_config(shape, QWEN3_VOCAB, remat=shape != "qwen3-tiny")
    cfg = ts.step_config(max_completion_length=new, logprob_chunk=chunk)
    div = divergences.get("kl")
    opt = make_optimizer(OptimConfig(lr=1e-6), total_steps=10)
    params = jax.eval_shape(lambda: models.init_params(mc, jax.random.key(0)))
    state = jax.eval_shape(
        lambda p: ts.init_state(p, opt, div.init_params(None), 0.04, cfg), params
    )
    ids = jax.ShapeDtypeStruct((rows, prompt + new), jnp.int32)
    batch = {
        "input_ids": ids,
        "attention_mask": ids,
        "completion_mask": jax.ShapeDtypeStruct((rows, new), jnp.int32),
        "advantages": jax.ShapeDtypeStruct((rows,), jnp.float32),
    }
    apply_fn = policy.make_apply_fn(mc)
    ref = ts.make_compute_logprobs(apply_fn, cfg, policy=False)
    update = ts.make_update(apply_fn, div, opt, cfg)
    out = {}
    for name, lowered in (
        ("reference", ref.lower(state, ids, ids, new)),
        ("update", update.lower(state, batch, jax.random.key(0))),
    ):
        out[name] = lowered.compile().memory_analysis().temp_size_in_bytes
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="qwen3-tiny,1.7B")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=0, help="chunk tokens (0: the StepConfig default)")
    a = ap.parse_args(argv)
    from gbmpo_jax.rl.logprobs import chunk_tokens_for
    from gbmpo_jax.rl.train_step import StepConfig

    # the default (-1, auto) resolved to tokens, so that the report names the chunk
    chunk = chunk_tokens_for(a.chunk or StepConfig().logprob_chunk, QWEN3_VOCAB)
    logits = a.rows * a.new * QWEN3_VOCAB * 4
    print(f"one fp32 [N,T,V] = {a.rows} x {a.new} x {QWEN3_VOCAB} x 4 B = {logits / 2**30:.2f} GiB")
    rows = []
    for shape in a.shapes.split(","):
        full = temp_bytes(shape, 0, a.rows, a.prompt, a.new)
        chunked = temp_bytes(shape, chunk, a.rows, a.prompt, a.new)
        for phase in ("reference", "update"):
            row = dict(shape=shape, phase=phase, chunk=chunk, full_gib=full[phase] / 2**30,
                       chunked_gib=chunked[phase] / 2**30)  # fmt: skip
            rows.append(row)
            print(
                f"{shape:>10} {phase:>9}: full logits {row['full_gib']:7.2f} GiB -> "
                f"chunk {chunk} tokens {row['chunked_gib']:6.2f} GiB"
            )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
