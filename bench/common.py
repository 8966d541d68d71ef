"""Shared benchmark helpers: timing statistics, the matmul peak, model FLOP counts, machine facts.

FLOP model (per token, Qwen2/Llama-shaped decoder, "useful" work only):
  matmul params  M = L * (E*(H + 2*Hkv)*D + H*D*E + 3*E*F) + E*V      (lm_head included)
  forward        2*M  + attention 4*L*H*D*c   (QK^T and AV at context length c; causal, so a
                                              sequence of S tokens costs sum_{c=1..S} c)
  fwd + bwd      3 * forward (the usual 6*M rule; attention likewise x3)
Fractions are taken against the fp32 (CPU) or bf16 (GPU) matmul peak measured in the same run.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import resource
import statistics
import subprocess
import time


def timed(fn) -> float:
    """Wall seconds of one call of ``fn()`` (the caller blocks on async results inside fn)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def stats(samples: list[float], digits: int = 4) -> dict:
    """Median, min, max and relative spread ((max - min) / median) of repeated timings."""
    if not samples:
        raise ValueError("stats() needs at least one timing sample")
    med = statistics.median(samples)
    return {
        "median": round(med, digits),
        "min": round(min(samples), digits),
        "max": round(max(samples), digits),
        "spread": round((max(samples) - min(samples)) / med, 3) if med > 0 else 0.0,
        "n": len(samples),
    }


def matmul_peak(n: int = 2048, reps: int = 5, dtype: str = "float32") -> float:
    """Best-of-``reps`` FLOP/s of an n x n x n jnp matmul (the roofline denominator)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = min(timed(lambda: f(a).block_until_ready()) for _ in range(reps))
    return 2 * n**3 / best


def matmul_params(c) -> int:
    """Parameters that take part in matmuls per token (embedding lookup excluded)."""
    per_layer = c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    per_layer += c.num_heads * c.head_dim * c.hidden_size + 3 * c.hidden_size * c.intermediate_size
    return c.num_layers * per_layer + c.hidden_size * c.vocab_size


def attn_flops(c, ctx_sum: float) -> float:
    """Forward attention FLOPs summed over queries whose context lengths add up to ctx_sum."""
    return 4.0 * c.num_layers * c.num_heads * c.head_dim * ctx_sum


def seq_forward_flops(c, rows: int, seq_len: int) -> float:
    """One causal forward pass over ``rows`` sequences of ``seq_len`` tokens."""
    ctx = seq_len * (seq_len + 1) / 2
    return rows * (2.0 * matmul_params(c) * seq_len + attn_flops(c, ctx))


def logprob_forward_flops(c, prompts: int, group: int, prompt_len: int, new_tokens: int) -> float:
    """One log-prob forward as the step program runs it: each prompt once per group
    (`models.hidden_shared_prompt`), the ``prompts * group`` completions attending to their
    prompt, and the lm_head on the completion positions only (the log-prob passes never
    apply it to the prompt). Forward + backward: 3x this (model FLOPs: the chunked head's
    recomputation in the backward is not counted)."""
    head = c.hidden_size * c.vocab_size
    trunk = matmul_params(c) - head
    rows, p, t = prompts * group, prompt_len, new_tokens
    flops = 2.0 * trunk * (prompts * p + rows * t) + 2.0 * head * rows * t
    ctx = prompts * p * (p + 1) / 2 + rows * sum(p + i + 1 for i in range(t))
    return flops + attn_flops(c, ctx)


def rollout_flops(c, prompt_len: int, prompts: int, group: int, new_tokens: int) -> float:
    """Prefill each prompt once, then ``new_tokens`` cached decode steps for every row."""
    prefill = prompts * (2.0 * matmul_params(c) * prompt_len)
    prefill += prompts * attn_flops(c, prompt_len * (prompt_len + 1) / 2)
    ctx = sum(prompt_len + t + 1 for t in range(new_tokens))
    decode = prompts * group * (2.0 * matmul_params(c) * new_tokens + attn_flops(c, ctx))
    return prefill + decode


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size of this process (or of its waited-for children), MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)  # Linux reports KiB


def git_commit(root=None) -> str:
    """Short HEAD hash, with '+dirty' when tracked files differ from it."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine() -> dict:
    """Facts that make a number comparable: host, cores, load, library versions."""
    import jax

    from gbmpo_jax.scale import host

    info = {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()[:1]],
        # the malloc of this process (the workers inherit LD_PRELOAD): see scale/host.py
        "allocator": host.allocator(),
        "commit": git_commit(),
    }
    for name in ("torch", "transformers", "trl"):
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None
    return info
