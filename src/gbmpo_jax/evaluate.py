"""Held-out evaluation: greedy accuracy / pass@1 and sampled pass@k, per-example records.

``python -m gbmpo_jax.evaluate --model PATH --task gsm8k --split test [--samples 10 --k 1,5]``
writes ``records.jsonl`` (prompt, completions, verdicts per example) and ``summary.json`` into
a new directory (an earlier result is never replaced). ``--model RUN_DIR`` evaluates a training
run with the run's own task, options, prompt style, lengths and held-out subset unless a flag
overrides them (``run_evaluation.py``), and scores as the run's last evaluation did.

The core, ``evaluate(examples, task, generate_fn, ...)``, takes any
``generate_fn(conversations, *, greedy, num_samples, max_new_tokens, key) -> [[str] * n] * B``,
so the training loop can call it for periodic held-out evaluation with its own sampler; the
CLI builds one from ``sampling.generate_text`` (``make_generate_fn``).

pass@k uses the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374, eq. 1): with n
samples of which c are correct, pass@k = 1 - C(n-c, k) / C(n, k), averaged over problems.
Verdicts are binary (every assert passes / the answer matches); ``mean_reward`` reports the
task reward with the chosen ``reward_kwargs`` (e.g. partial credit) alongside.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from gbmpo_jax import data, prompts
from gbmpo_jax.rewards import REWARD_MODES, SANDBOXES

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
        from gbmpo_jax.sampling import generate_text

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


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m gbmpo_jax.evaluate", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--model", required=True, help="HF dir, .gguf, 'smollm2' or a run directory")
    # None = the run's own value for a run directory, else the default in DEFAULTS
    ap.add_argument("--task", default=None, choices=sorted(data.TASKS))
    ap.add_argument("--split", default=None)
    ap.add_argument("--source", default="", help="hub id, .jsonl/.parquet file or directory")
    ap.add_argument("--option", action="append", default=[], help="task option key=value")
    ap.add_argument("--chat-template-kwarg", action="append", default=[], metavar="KEY=VALUE",
                    help="chat-template variable, e.g. enable_thinking=false (Qwen3; as the "
                         "run's task.chat_template_kwargs)")  # fmt: skip
    ap.add_argument("--limit", type=int, default=0, help="first N examples only (0 = all)")
    ap.add_argument("--all", action="store_true",
                    help="run directory: the whole split, not the run's held-out subset")  # fmt: skip
    ap.add_argument("--samples", type=int, default=0, help="n sampled completions (0 = greedy)")
    ap.add_argument("--k", default="1", help="comma-separated k for pass@k (sampled mode)")
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default=None, choices=("float32", "bfloat16"))
    ap.add_argument("--reward", default=None, choices=REWARD_MODES)
    ap.add_argument("--timeout-s", type=float, default=None, help="per-assert limit (code tasks)")
    ap.add_argument("--sandbox", default=None, choices=SANDBOXES)
    ap.add_argument("--out", default="", help="output directory (default: a new one under "
                    "runs/, or RUN_DIR/evals/ for a run directory)")  # fmt: skip
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--debug", action="store_true", help="print tracebacks of input errors")
    return ap


# Flag values for a model that is not a run directory (a run directory supplies its own).
DEFAULTS = {"task": "gsm8k", "split": "test", "max_new_tokens": 256, "batch_size": 8,
            "dtype": "float32", "reward": "binary", "timeout_s": 5.0, "sandbox": "bwrap"}  # fmt: skip


def fresh_output_dir(requested: str, default: pathlib.Path) -> pathlib.Path:
    """A directory that holds no earlier result (not created yet). An explicit --out that does
    is refused; the default gets a -2, -3, ... suffix when taken."""
    from gbmpo_jax import errors

    if requested:
        out = pathlib.Path(requested)
        if (out / "summary.json").exists() or (out / "records.jsonl").exists():
            raise errors.InputError(
                f"--out {requested}: already holds an evaluation (summary.json / "
                "records.jsonl); pass a new directory or omit --out"
            )
    else:
        out, n = default, 1
        while out.exists():
            n += 1
            out = default.with_name(f"{default.name}-{n}")
    return out


def make_output_dir(out: pathlib.Path) -> pathlib.Path:
    """Creates the directory chosen by `fresh_output_dir` (just before results are written)."""
    from gbmpo_jax import errors

    with errors.phase(f"--out {str(out)!r}", "pass a directory you can write"):
        out.mkdir(parents=True, exist_ok=True)
    return out


def run(args: argparse.Namespace, generate_fn: GenerateFn | None = None, count_tokens=None) -> dict:
    """The CLI body; ``generate_fn`` replaces the model (tests pass a stub)."""
    from gbmpo_jax import run_evaluation

    if generate_fn is None and run_evaluation.is_run_dir(args.model):
        return run_evaluation.run(args)
    args = argparse.Namespace(**{**vars(args), **{k: v for k, v in DEFAULTS.items()
                                                  if getattr(args, k, None) is None}})  # fmt: skip
    options = {}
    for kv in args.option:
        if "=" not in kv:
            raise ValueError(f"--option {kv!r} must be key=value, e.g. --option digits=3")
        k, v = kv.split("=", 1)
        options[k] = v
    from gbmpo_jax import errors

    out = fresh_output_dir(  # checked first: a refused --out costs no model load
        args.out, pathlib.Path(f"runs/eval_{datetime.date.today():%Y%m%d}_{args.task}_{args.split}")
    )
    with errors.phase(f"task {args.task!r} split {args.split!r} (--source {args.source!r})",
                      "fix that file or pass another --source / --split"):  # fmt: skip
        examples = data.load_split(args.task, args.split, source=args.source, options=options)
    if args.limit:
        examples = examples[: args.limit]
    greedy = args.samples == 0
    ks = [int(k) for k in args.k.split(",")] if not greedy else [1]
    key = None
    if generate_fn is None:
        import jax

        with errors.phase(f"--model {args.model!r}", "check that file / directory"):
            model, tokenizer = load_policy(args.model, args.dtype)
        pairs = getattr(args, "chat_template_kwarg", [])
        bad = [kv for kv in pairs if "=" not in kv]
        if bad:
            raise ValueError(f"--chat-template-kwarg {bad[0]!r} must be key=value, e.g. "
                             "enable_thinking=false")  # fmt: skip
        chat_kwargs = prompts.template_kwargs([kv.split("=", 1) for kv in pairs])
        generate_fn = make_generate_fn(model, tokenizer, temperature=args.temperature,
                                       top_p=args.top_p, top_k=args.top_k,
                                       chat_template_kwargs=chat_kwargs)  # fmt: skip
        count_tokens = lambda s: len(tokenizer.encode(s, add_special_tokens=False))
        key = None if greedy else jax.random.key(args.seed)
    make_output_dir(out)
    summary = evaluate(
        examples,
        args.task,
        generate_fn,
        greedy=greedy,
        num_samples=max(1, args.samples),
        ks=ks,
        max_new_tokens=args.max_new_tokens,
        key=key,
        batch_size=args.batch_size,
        reward_kwargs={
            "partial": args.reward == "partial",
            "timeout_s": args.timeout_s,
            "sandbox": args.sandbox,
        },  # fmt: skip
        records_path=out / "records.jsonl",
        count_tokens=count_tokens,
        progress=not args.no_progress,
    )
    summary.update(model=args.model, split=args.split, source=args.source, options=options)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    from gbmpo_jax import errors

    args = _parser().parse_args(argv)
    try:
        summary = run(args)
    except errors.user_errors() as e:
        return errors.report(e, debug=args.debug)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
