"""Held-out evaluation CLI: ``python -m gbmpo_jax.evaluate --model PATH [--task gsm8k] ...``.

Writes ``records.jsonl`` (prompt, completions, verdicts per example) and ``summary.json`` into
a new directory (an earlier result is never replaced): greedy accuracy / pass@1, or sampled
pass@k with ``--samples n --k 1,5``. ``--model`` is a HF directory, a ``.gguf``, "smollm2" or a
training run directory; a run directory is evaluated with the run's own task, options, prompt
style, lengths and held-out subset unless a flag overrides them (`run_evaluation`), and scores
as the run's last evaluation did. The scoring itself is `tasks.evaluation.evaluate`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
from collections.abc import Sequence

import jax

from gbmpo_jax import errors, run_evaluation
from gbmpo_jax.run_evaluation import fresh_output_dir, make_output_dir
from gbmpo_jax.tasks import data, prompts
from gbmpo_jax.tasks import evaluation as evaluate_lib
from gbmpo_jax.tasks.rewards import REWARD_MODES, SANDBOXES

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


def run(args: argparse.Namespace, generate_fn: evaluate_lib.GenerateFn | None = None,
        count_tokens=None) -> dict:  # fmt: skip
    """The CLI body; ``generate_fn`` replaces the model (tests pass a stub)."""
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
        with errors.phase(f"--model {args.model!r}", "check that file / directory"):
            model, tokenizer = evaluate_lib.load_policy(args.model, args.dtype)
        pairs = getattr(args, "chat_template_kwarg", [])
        bad = [kv for kv in pairs if "=" not in kv]
        if bad:
            raise ValueError(f"--chat-template-kwarg {bad[0]!r} must be key=value, e.g. "
                             "enable_thinking=false")  # fmt: skip
        chat_kwargs = prompts.template_kwargs([kv.split("=", 1) for kv in pairs])
        generate_fn = evaluate_lib.make_generate_fn(model, tokenizer, temperature=args.temperature,
                                       top_p=args.top_p, top_k=args.top_k,
                                       chat_template_kwargs=chat_kwargs)  # fmt: skip
        count_tokens = lambda s: len(tokenizer.encode(s, add_special_tokens=False))
        key = None if greedy else jax.random.key(args.seed)
    make_output_dir(out)
    summary = evaluate_lib.evaluate(
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
    args = _parser().parse_args(argv)
    try:
        summary = run(args)
    except errors.user_errors() as e:
        return errors.report(e, debug=args.debug)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
