"""Held-out evaluation: greedy accuracy / pass@1 and sampled pass@k, per-example records.

The CLI over it is ``python -m gbmpo_jax.evaluate`` (gbmpo_jax/evaluate.py). The core, ``evaluate(examples, task, generate_fn, ...)``, takes any
``generate_fn(conversations, *, greedy, num_samples, max_new_tokens, key) -> [[str] * n] * B``,
so the training loop can call it for periodic held-out evaluation with its own sampler; the
CLI builds one from ``sampling.generate_text`` (``make_generate_fn``).

pass@k uses the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374, eq. 1): with n
samples of which c are correct, pass@k = 1 - C(n-c, k) / C(n, k), averaged over problems.
Verdicts are binary (every assert passes / the answer matches); ``mean_reward`` reports the
task reward with the chosen ``reward_kwargs`` (e.g. partial credit) alongside.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from gbmpo_jax.tasks import data

GenerateFn = Callable[..., list[list[str]]]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``c`` of ``n`` samples correct (needs k <= n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _batch_key(key, index: int):
    if key is None:
        return None
    import jax

    return jax.random.fold_in(key, index)


def evaluate(
    examples: Sequence[data.Example],
    task: data.Task | str,
    generate_fn: GenerateFn,
    *,
    greedy: bool = True,
    num_samples: int = 1,
    ks: Sequence[int] = (1,),
    max_new_tokens: int = 256,
    key=None,
    batch_size: int = 8,
    reward_kwargs: dict | None = None,
    records_path: str | pathlib.Path | None = None,
    count_tokens: Callable[[str], int] | None = None,
    progress: bool = False,
) -> dict:
    """Generate for every example, judge, and summarise.

    Returns a JSON-able dict: ``accuracy`` (mean fraction of correct samples: greedy accuracy,
    or the pass@1 estimate when sampling), ``pass@k`` for each k in ``ks``, ``mean_reward``,
    ``mean_completion_chars`` (and ``mean_completion_tokens`` with ``count_tokens``), counts of
    code statuses, and timing. With ``records_path`` one JSON line per example is written
    as it is judged.
    """
    task = data.get_task(task) if isinstance(task, str) else task
    if greedy and num_samples != 1:
        raise ValueError("greedy decoding gives one completion per prompt: set num_samples=1")
    if not examples:
        raise ValueError("evaluate got no examples: check the split and --limit")
    ks = sorted(set(ks))
    if ks[0] < 1 or ks[-1] > num_samples:
        raise ValueError(f"every k in {ks} must be in [1, num_samples={num_samples}]")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    reward_kwargs = dict(reward_kwargs or {})
    partial = bool(reward_kwargs.pop("partial", False))
    start = time.monotonic()
    records = open(records_path, "w") if records_path else None  # noqa: SIM115
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(examples), unit="ex", desc=f"eval {task.name}", file=sys.stderr)
    fractions, per_k, rewards, chars, tokens = [], {k: [] for k in ks}, [], [], []
    statuses = Counter()
    try:
        for b, lo in enumerate(range(0, len(examples), batch_size)):
            batch = list(examples[lo : lo + batch_size])
            outs = generate_fn(
                [e.prompt for e in batch],
                greedy=greedy,
                num_samples=num_samples,
                max_new_tokens=max_new_tokens,
                key=_batch_key(key, b),
            )
            if len(outs) != len(batch) or any(len(o) != num_samples for o in outs):
                raise ValueError(
                    f"generate_fn must return {len(batch)} lists of {num_samples} completions "
                    f"(one list per conversation), got {[len(o) for o in outs]}"
                )
            flat = [c for o in outs for c in o]
            owners = [e for e in batch for _ in range(num_samples)]
            # One judgement gives both: the binary verdict and, for code, passed / total.
            verdicts, infos = task.judge(flat, owners, **{**reward_kwargs, "partial": False})
            scores = [
                x["passed"] / x["total"] if partial and x.get("total") else v
                for v, x in zip(verdicts, infos, strict=True)
            ]
            for i, ex in enumerate(batch):
                sl = slice(i * num_samples, (i + 1) * num_samples)
                correct = int(sum(v == 1.0 for v in verdicts[sl]))
                fractions.append(correct / num_samples)
                rec_k = {f"pass@{k}": pass_at_k(num_samples, correct, k) for k in ks}
                for k in ks:
                    per_k[k].append(rec_k[f"pass@{k}"])
                rewards.extend(scores[sl])
                chars.extend(len(c) for c in flat[sl])
                if count_tokens is not None:
                    tokens.extend(count_tokens(c) for c in flat[sl])
                statuses.update(str(x.get("status", "")) for x in infos[sl] if "status" in x)
                if records is not None:
                    rec = {"id": ex.id, "prompt": ex.prompt, "completions": flat[sl],
                           "verdicts": verdicts[sl], "rewards": scores[sl], "details": infos[sl],
                           "num_correct": correct, **rec_k}  # fmt: skip
                    records.write(json.dumps(rec) + "\n")
            if records is not None:
                records.flush()
            if bar is not None:
                bar.update(len(batch))
    finally:
        if records is not None:
            records.close()
        if bar is not None:
            bar.close()
    wall = time.monotonic() - start
    summary = {
        "task": task.name,
        "n_examples": len(fractions),
        "greedy": greedy,
        "num_samples": num_samples,
        "accuracy": float(np.mean(fractions)),
        **{f"pass@{k}": float(np.mean(v)) for k, v in per_k.items()},
        "mean_reward": float(np.mean(rewards)),
        "mean_completion_chars": float(np.mean(chars)),
        "wall_s": wall,
        "examples_per_s": len(fractions) / wall if wall > 0 else float("inf"),
    }
    if tokens:
        summary["mean_completion_tokens"] = float(np.mean(tokens))
    if statuses:
        summary["code_statuses"] = dict(statuses)
    return summary


# ----------------------------------------------------------------------------- the real sampler


def make_generate_fn(model, tokenizer, *, temperature=1.0, top_p=1.0, top_k=0,
                     chat_template_kwargs=None) -> GenerateFn:  # fmt: skip
    """Adapter to ``sampling.generate_text`` (imported lazily): n samples per conversation are
    drawn by repeating the conversation n times in one batch. ``chat_template_kwargs`` (e.g.
    ``{"enable_thinking": False}``) reach the chat template as in training."""

    def generate_fn(conversations, *, greedy, num_samples, max_new_tokens, key):
        from gbmpo_jax.sampler.sampling import generate_text

        if greedy and num_samples != 1:
            raise ValueError("greedy decoding gives one completion per prompt: num_samples=1")
        convs = [c for c in conversations for _ in range(num_samples)]
        texts = generate_text(
            model, tokenizer, convs, max_new_tokens=max_new_tokens, greedy=greedy,
            temperature=temperature, top_p=top_p, top_k=top_k, key=key,
            chat_template_kwargs=chat_template_kwargs,
        )  # fmt: skip
        return [texts[i : i + num_samples] for i in range(0, len(texts), num_samples)]

    return generate_fn


def load_policy(path: str, dtype: str = "float32"):
    """(model, tokenizer) from a HF directory, a ``.gguf`` or "smollm2" (training run
    directories go through ``run_evaluation``)."""
    from gbmpo_jax import models

    p = models.smollm2_gguf_path() if path == "smollm2" else pathlib.Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"--model {path}: not found (a HF directory, a .gguf file, 'smollm2' or a run dir)"
        )
    tokenizer = models.load_tokenizer(p)
    tokenizer.padding_side = "left"
    return models.load_pretrained(p, dtype=dtype), tokenizer
