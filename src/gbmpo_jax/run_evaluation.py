"""Evaluating a training run directory as the run itself evaluated.

`python -m gbmpo_jax.evaluate --model RUN_DIR` reads the run's `config.json` and, unless a flag
overrides it, uses the run's task, data source, task options, chat-template variables, prompt
length cap, `rollout.max_new_tokens`, reward settings, parameter dtype, eval split and the
very held-out subset the run scored (`task.eval_size` examples drawn from `run.seed`). Greedy
decoding goes through the training loop's own sampler adapter (`episodes.make_generate_fn`,
same batch size), so the result equals the run's last `eval/*` row on that split.

The policy is the run's `export/` (what a user ships) when present, else the newest checkpoint
that verifies. Results go to a new directory, `RUN_DIR/evals/<date>-<time>_<split>`, so an
evaluation never replaces an earlier one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib

import jax

from gbmpo_jax import config as config_lib
from gbmpo_jax import errors, models, policy
from gbmpo_jax.rl import program
from gbmpo_jax.rl.train_step import policy_params
from gbmpo_jax.scale import compile_cache, host
from gbmpo_jax.tasks import data, episodes
from gbmpo_jax.tasks import evaluation as evaluate_lib
from gbmpo_jax.workdir import checkpoint

TRAIN_EVAL_BATCH = 16  # episodes.evaluate's batch size in the training loop


def is_run_dir(path) -> bool:
    """A directory written by `gbmpo_jax.train` (its config.json has task and run sections)."""
    p = pathlib.Path(path).expanduser()
    if not (p / "config.json").is_file() or not (
        (p / "checkpoints").is_dir() or (p / "export").is_dir()
    ):
        return False
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "task" in cfg and "run" in cfg


def run_config(run_dir: pathlib.Path, args: argparse.Namespace):
    """The run's config with the evaluation flags that were given applied on top."""
    with errors.phase(f"{run_dir / 'config.json'}", "is this a training run directory?"):
        cfg = config_lib.from_dict(json.loads((run_dir / "config.json").read_text()))
    t = cfg.task
    ch = {}
    if args.task and args.task != t.name:  # another task: none of the run's task settings
        ch.update({"task.name": args.task, "task.source": "", "task.options": ()})
    if args.source:
        ch["task.source"] = args.source
    if args.option:
        ch["task.options"] = tuple(tuple(kv.split("=", 1)) for kv in args.option)
    if args.split:
        ch["task.eval_split"] = args.split
    if getattr(args, "chat_template_kwarg", None):  # the flag and field of chat templates
        pairs = tuple(tuple(kv.split("=", 1)) for kv in args.chat_template_kwarg)
        ch["task.chat_template_kwargs"] = pairs
    for flag, key in (("max_new_tokens", "rollout.max_new_tokens"), ("dtype", "model.dtype"),
                      ("timeout_s", "task.code_timeout_s"), ("sandbox", "task.sandbox")):  # fmt: skip
        if getattr(args, flag) is not None:
            ch[key] = getattr(args, flag)
    if args.reward is not None:
        ch["task.reward"] = args.reward
    return config_lib.override(cfg, **ch), cfg


def load_run_policy(run_dir: pathlib.Path, cfg, log=print):
    """(model, tokenizer): the export if present, else the newest checkpoint that verifies."""
    export = run_dir / "export"
    if export.is_dir():
        with errors.phase(f"{export}", "re-export the run or evaluate its checkpoints"):
            tok = models.load_tokenizer(export)
            tok.padding_side = "left"
            model = models.load_pretrained(export, dtype=cfg.model.dtype,
                                           compute_dtype=cfg.model.compute_dtype)  # fmt: skip
        return model, tok
    model, tok = policy.load_model_and_tokenizer(cfg)
    obj = policy.build_objective(cfg, model.config, tok)
    state = program.init_state(cfg, model.params, obj)
    ckpt = checkpoint.Checkpointer(run_dir / "checkpoints")
    try:
        step = ckpt.latest_good_step(log, reject=False)  # read-only: never moves run files
        if step is None:
            raise checkpoint.CheckpointError(
                f"{run_dir / 'checkpoints'} holds no checkpoint that verifies and the run has "
                "no export/: nothing to evaluate"
            )
        state, _ = ckpt.restore(step, state)
    finally:
        ckpt.close()
    params = jax.device_get(policy_params(state.params, state.frozen, obj.step_cfg))
    params = jax.tree.map(lambda a: a.astype(cfg.model.dtype), params)
    return models.Model(model.config, params), tok


def run(args: argparse.Namespace, log=print) -> dict:
    """`evaluate` on a run directory (see the module docstring); writes records and summary."""
    run_dir = pathlib.Path(args.model).expanduser()
    cfg, trained = run_config(run_dir, args)
    default = run_dir / "evals" / f"{datetime.datetime.now():%Y%m%d-%H%M%S}_{cfg.task.eval_split}"
    out = fresh_output_dir(args.out, default)  # before any loading
    host.release_around_compiles()  # as training does (`train.setup`)
    with errors.phase(f"run.compile_cache={cfg.run.compile_cache!r}",
                      "pass a writable directory, or 'off'"):  # fmt: skip
        compile_cache.enable(cfg.run.compile_cache)
    model, tok = load_run_policy(run_dir, cfg, log)
    t = cfg.task
    same_data = (t.name, t.source, t.options, t.eval_split) == (
        trained.task.name, trained.task.source, trained.task.options, trained.task.eval_split)  # fmt: skip
    with errors.phase(f"task {t.name!r} data (source {t.source or 'default'!r})",
                      "fix that file or pass another --source"):  # fmt: skip
        td = episodes.TrainData.from_config(cfg, tok)
    if same_data and not args.limit and not args.all:
        examples, which = (
            td.eval_examples,
            f"the run's held-out subset (task.eval_size={t.eval_size})",
        )
    else:
        examples = data.load_split(t.name, t.eval_split, source=t.source, options=dict(t.options))
        examples = examples[: args.limit] if args.limit else examples
        which = f"first {args.limit}" if args.limit else "all"
    if not examples:
        raise errors.InputError(
            f"--split {t.eval_split!r}: task {t.name!r} (source {t.source or 'default'!r}) has "
            "no examples in that split; choose another --split or --source"
        )
    obj = policy.build_objective(cfg, model.config, tok)
    greedy = args.samples == 0
    bs = args.batch_size or min(TRAIN_EVAL_BATCH, len(examples))
    chat = getattr(td, "chat_kwargs", None)  # the run's chat-template variables, if any
    if greedy:  # the training loop's own adapter: same encoding, padding and batch size
        gen = episodes.make_generate_fn(model, tok, obj.eval_sampling, t.max_prompt_len, bs,
                                        **({"chat_kwargs": chat} if chat else {}))  # fmt: skip
        key = None
    else:
        gen = evaluate_lib.make_generate_fn(
            model, tok, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            **({"chat_template_kwargs": chat} if chat else {}),
        )  # fmt: skip
        key = jax.random.key(args.seed)
    make_output_dir(out)
    summary = evaluate_lib.evaluate(
        examples, t.name, gen, greedy=greedy, num_samples=max(1, args.samples),
        ks=[int(k) for k in args.k.split(",")] if not greedy else [1],
        max_new_tokens=cfg.rollout.max_new_tokens, key=key, batch_size=bs,
        reward_kwargs=dict(td.reward_kwargs), records_path=out / "records.jsonl",
        count_tokens=lambda s: len(tok.encode(s, add_special_tokens=False)),
        progress=not args.no_progress,
    )  # fmt: skip
    summary.update(model=str(run_dir), policy="export" if (run_dir / "export").is_dir()
                   else "checkpoint", split=t.eval_split, source=t.source,
                   options=dict(t.options), examples=which, out=str(out),
                   max_new_tokens=cfg.rollout.max_new_tokens)  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def fresh_output_dir(requested: str, default: pathlib.Path) -> pathlib.Path:
    """A directory that holds no earlier result (not created yet). An explicit --out that does
    is refused; the default gets a -2, -3, ... suffix when taken."""
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
    with errors.phase(f"--out {str(out)!r}", "pass a directory you can write"):
        out.mkdir(parents=True, exist_ok=True)
    return out
