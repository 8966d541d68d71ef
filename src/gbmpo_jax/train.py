"""Training entry point: `python -m gbmpo_jax.train --exp NAME [--workdir DIR] [key=value ...]`.

One GBMPO step (arXiv 2602.04380, section 1):
  prompts (seeded order) -> G completions each (sampling.generate, shared prefill)
  -> rewards on the host (math check / sandboxed code; overlaps the device's log-prob pass)
  -> group-relative advantages -> old + reference log-probs (one jitted pass)
  -> mu optimizer steps (train_step.update) -> metrics.

Resume order: build everything from the config; if the workdir holds a checkpoint, refuse a
different config (naming the fields), restore state, truncate metrics.jsonl to the restored
step and continue at step + 1. Everything random is derived from (run.seed, step) and the
data order from (run.seed, epoch), so a resumed run repeats an uninterrupted one exactly.
Checkpoints are verified before use: a step that fails is reported, moved aside, and the run
falls back to the newest good one (checkpoint.py). metrics.jsonl and the TensorBoard files are
cut back to the restored step, or cleared on a fresh start, so a workdir holds one run.
SIGTERM (TPU preemption) finishes the step in flight, saves, and exits 0; during the supervised
warm-up it saves the warm-up's state (`warmup_checkpoint/`), which the next run continues.

One process writes a workdir (`lock.RunLock`). Bad inputs (data, model, checkpoint, mirror
map, workdir, config) end the CLI with one line naming the file or key, exit code 2, the
traceback in `error.log` (or on stderr with --debug); a fresh workdir that fails before its
first checkpoint is removed again.

Length (~410 lines): the run loop, its set-up and the CLI; the loop body moves into the
shared step program when training and ES populations share it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import shutil
import signal
import sys
import threading
import time

import jax

from gbmpo_jax import config as config_lib
from gbmpo_jax import errors, experiment, models, policy
from gbmpo_jax.rl import placement
from gbmpo_jax.rl import program as program_lib
from gbmpo_jax.rl.train_step import check_skips
from gbmpo_jax.scale import compile_cache, distributed, host, memory
from gbmpo_jax.scale import mesh as mesh_lib
from gbmpo_jax.sft import WARMUP_CKPT, supervised_warmup
from gbmpo_jax.tasks import episodes
from gbmpo_jax.workdir import checkpoint, lock, metrics, plot

DONE_MARKER = "DONE"


class _Preempted:
    """SIGTERM flag: set by the handler, read between steps."""

    def __init__(self):
        self.flag = False

    def __call__(self, signum, frame):
        self.flag = True


def default_workdir(name: str, root="runs") -> pathlib.Path:
    """`runs/{date}-{time}_{name}`; the newest unfinished run of the same experiment (one with
    checkpoints and no done marker) is resumed instead, so re-running a command resumes it
    and running it again after it finished starts a fresh run."""
    safe = name.replace(":", "-")
    root = pathlib.Path(root)
    if root.is_dir():
        for d in sorted(root.glob(f"*_{safe}"), reverse=True):
            if not (d / DONE_MARKER).exists() and (d / "checkpoints").is_dir():
                return d
    return root / f"{datetime.datetime.now():%Y%m%d-%H%M%S}_{safe}"


def setup(cfg, log=print):
    """(model, tokenizer, objective, train data) of a run config, the one set-up path of
    training and the ES runner; a bad model or data input is an InputError naming its key.
    Logs (process 0) a note when XLA runs on the CPU without tcmalloc, hands each large
    compile's freed memory back to the kernel (`scale.host`) and points JAX's persistent
    compilation cache at ``run.compile_cache`` (`scale.compile_cache`)."""
    m, t = cfg.model, cfg.task
    is_main = jax.process_index() == 0
    note = host.allocator_note(jax.default_backend())
    if note and is_main:
        log(note)
    if m.remat and not m.scan_layers and jax.default_backend() == "cpu" and is_main:
        # measured on the "23.6M" trunk's backward: 2.0 GB of temporaries without remat,
        # 1.85 GB with remat unrolled, 0.35 GB with remat over the scanned layers
        log("note: model.remat saves no memory on XLA:CPU with model.scan_layers=false (XLA:CPU "
            "drops the barriers that keep the recompute in the backward); set "
            "model.scan_layers=true for remat's memory")  # fmt: skip
    host.release_around_compiles()
    with errors.phase(f"run.compile_cache={cfg.run.compile_cache!r}",
                      "pass a writable directory, or 'off'"):  # fmt: skip
        cache = compile_cache.enable(cfg.run.compile_cache)
    if cache is None and cfg.run.compile_cache != "off" and is_main:
        log("note: no XLA compilation cache (run.compile_cache): every start compiles afresh")
    what = f"model.path={m.path!r}" + (f" / model.tokenizer={m.tokenizer!r}" if m.tokenizer else "")
    with errors.phase(what, "check or replace that file / directory"):
        model, tokenizer = policy.load_model_and_tokenizer(cfg)
    obj = policy.build_objective(cfg, model.config, tokenizer)
    with errors.phase(f"task {t.name!r} data (task.source={t.source or 'default'!r})",
                      "fix that file or set task.source to another"):  # fmt: skip
        task = episodes.TrainData.from_config(cfg, tokenizer)
    if not task.eval_examples and t.eval_size:
        raise config_lib.ConfigError(
            f"task.eval_split={t.eval_split!r}: task {t.name!r} (task.source="
            f"{t.source or 'default'!r}) has no rows in that split, so the run would train "
            "without evaluation; point task.source at data with that split, choose another "
            "task.eval_split, or set task.eval_size=0 to train without held-out evaluation"
        )
    return model, tokenizer, obj, task


def _has_checkpoint(workdir: pathlib.Path) -> bool:
    return any(
        d.is_dir() and d.name.isdigit()
        for sub in ("checkpoints", WARMUP_CKPT)
        if (workdir / sub).is_dir()
        for d in (workdir / sub).iterdir()
    )


def run(cfg: config_lib.Config, workdir, *, log=print) -> dict:
    """Trains per `cfg` in `workdir` (resuming if it holds a checkpoint); returns a summary.

    Holds the workdir's lock for the whole run and the SIGTERM handler from the start (the
    warm-up included); a workdir this call created is removed again if it fails before its
    first checkpoint, so a bad input leaves nothing half-written."""
    cfg = config_lib.validate(cfg)
    workdir = pathlib.Path(workdir)
    is_main = jax.process_index() == 0
    created = not workdir.exists()
    with errors.phase(f"--workdir {str(workdir)!r}", "pass a directory you can write"):
        workdir.mkdir(parents=True, exist_ok=True)
    run_lock = lock.RunLock(workdir).acquire() if is_main else None
    if run_lock is not None and run_lock.stale:
        log(f"took over the stale lock of process {run_lock.stale.get('pid')} (not running)")
    preempted = _Preempted()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, preempted) if main_thread else None
    ok = False
    try:
        out = _run(cfg, workdir, log, preempted)
        ok = True
        return out
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        if run_lock is not None:
            run_lock.release()
        if not ok and created and is_main and not _has_checkpoint(workdir):
            shutil.rmtree(workdir, ignore_errors=True)


def _run(cfg: config_lib.Config, workdir: pathlib.Path, log, preempted: _Preempted) -> dict:
    is_main = jax.process_index() == 0
    model, tokenizer, obj, task = setup(cfg, log)
    if not cfg.task.eval_size:
        log("task.eval_size=0: this run has no held-out evaluation (no eval/* metrics)")
    mc = model.config
    rows = cfg.rollout.prompts_per_step * cfg.rollout.group_size

    n_dev = cfg.mesh.num_devices
    mesh = mesh_lib.setup(cfg.mesh, jax.devices() if n_dev == -1 else jax.devices()[:n_dev])
    mesh_lib.check_rows(rows, mesh, "rollout.prompts_per_step x rollout.group_size")
    state = program_lib.init_state(cfg, model.params, obj)
    state, state_sh = placement.shard_state(state, mc, mesh, lora_cfg=obj.step_cfg.lora)
    del model  # its params now live (sharded) in the state
    # the one step program (program.py), compiled for a single run on the mesh
    prog = program_lib.make_program(mc, obj, dtype=cfg.model.dtype, mesh=mesh,
                                    state_sh=state_sh)  # fmt: skip
    rl_step = program_lib.make_step(prog, cfg, task, tokenizer, obj.sampling, mesh=mesh)
    # the sampler, evaluation and export read the policy in the model's dtype (e.g. bf16),
    # cast once from the float32 master weights
    merged = prog.policy
    # Evaluation decodes on every host; multi-host runs evaluate with the local sampler.
    eval_generate = prog.generate if jax.process_count() == 1 else None
    ckpt = checkpoint.Checkpointer(
        workdir / "checkpoints",
        keep=cfg.run.keep,
        every_steps=cfg.run.save_every_steps,
        every_minutes=cfg.run.save_every_minutes,
    )
    latest = ckpt.latest_good_step(log)
    if latest is not None:
        checkpoint.check_compatible(ckpt.restore_meta(latest)["config"], cfg)
        state, meta = ckpt.restore(latest, state)  # restored onto state's shardings
        start = latest
        if is_main:
            metrics.rewind(workdir, start)
        log(f"resumed from step {start} in {workdir}")
    else:
        start = 0
        if is_main:  # a fresh start: no record of an earlier run may stay in the workdir
            metrics.rewind(workdir, -1)
            (workdir / DONE_MARKER).unlink(missing_ok=True)
        if cfg.warmup.steps:
            state = supervised_warmup(cfg, state, obj, task, tokenizer, log,
                                      workdir=workdir, preempted=preempted)  # fmt: skip
            if state is None:  # SIGTERM during the warm-up: its state is saved
                ckpt.close()
                return {"step": 0, "warmup_interrupted": True, "first_eval": {},
                        "last_eval": {}}  # fmt: skip
            state = jax.device_put(state, state_sh)
    if is_main:
        (workdir / "config.json").write_text(json.dumps(config_lib.to_dict(cfg), indent=2))
    writer = metrics.Writer(workdir, enabled=is_main)

    def meta_for(step):
        return {
            "config": config_lib.to_dict(cfg),
            "step": step,
            "data": task.order_state(step, cfg.rollout.prompts_per_step),
            "seed": cfg.run.seed,
        }

    def evaluate(step):
        if not task.eval_examples:
            return {}
        t0 = time.monotonic()
        pol = models.Model(mc, merged(state))
        if eval_generate is None:
            pol = models.Model(mc, jax.device_get(pol.params))
        out = episodes.evaluate(
            pol, tokenizer, task, obj.eval_sampling, cfg.task.max_prompt_len,
            generate=eval_generate or episodes.sampling.generate,
        )  # fmt: skip
        out["perf/eval_s"] = time.monotonic() - t0
        writer.scalars(step, out)
        log(f"eval step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in out.items()))
        return out

    def final_evaluation(step):  # task.final_eval_split, e.g. the full test split
        t0 = time.monotonic()
        pol = models.Model(mc, merged(state))
        if eval_generate is None:
            pol = models.Model(mc, jax.device_get(pol.params))
        out = episodes.final_evaluation(pol, tokenizer, cfg, task, obj.eval_sampling,
                                        generate=eval_generate or episodes.sampling.generate)  # fmt: skip
        out["perf/final_eval_s"] = time.monotonic() - t0
        writer.scalars(step, out)
        log("final evaluation: " + " ".join(f"{k}={v:.4g}" if not isinstance(v, str) else
                                            f"{k}={v}" for k, v in out.items()))  # fmt: skip
        return out

    if latest is None:  # a fresh run (a restored step-0 checkpoint is already saved)
        first_eval = evaluate(0)
        ckpt.save(0, state, meta_for(0), force=True)
        if (workdir / WARMUP_CKPT).exists():  # the warm-up is in step 0 now
            ckpt.wait()
            shutil.rmtree(workdir / WARMUP_CKPT, ignore_errors=True)
    else:
        first_eval = {}
    progress = metrics.Progress(cfg.run.steps, start, enabled=is_main)
    last_eval, final_eval = first_eval, {}
    step = start
    if preempted.flag:  # SIGTERM before the first step: step `start` is already saved
        log(f"SIGTERM: step {start} is saved; exiting")
    try:
        for step in range(start + 1, cfg.run.steps + 1 if not preempted.flag else start + 1):
            t0 = time.monotonic()
            state, out = rl_step(state, step)
            t_end = time.monotonic()
            m = dict(out.metrics)
            check_skips(m, cfg.run.max_skipped_in_row)
            m.update(program_lib.rollout_metrics(out))
            m.update({
                "perf/step_s": t_end - t0,
                "perf/rollout_s": out.times["rollout_s"],
                "perf/reward_s": out.times["reward_s"],
                "perf/update_s": out.times["update_s"],
                "perf/rollout_tokens_per_s": int(out.lengths.sum())
                / max(out.times["rollout_s"], 1e-9),
            })  # fmt: skip
            rewards, texts = out.rewards[0], out.texts[0]
            if step % cfg.run.log_every == 0 or step == cfg.run.steps:
                writer.scalars(step, m)
                writer.histogram(step, "rollout/rewards", rewards)
                writer.histogram(step, "rollout/lengths", out.lengths[0])
                for i in range(min(cfg.run.samples_to_log, len(texts))):
                    writer.text(step, f"samples/{i}", texts[i])
            progress.update(
                step, reward=m["rollout/reward_mean"], tok_s=m["perf/rollout_tokens_per_s"]
            )
            if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step != cfg.run.steps:
                last_eval = evaluate(step)
            if step == cfg.run.steps:
                last_eval = evaluate(step)
                if cfg.task.final_eval_split:
                    final_eval = final_evaluation(step)
            ckpt.save(step, state, meta_for(step), force=preempted.flag or step == cfg.run.steps)
            if preempted.flag:
                log(f"SIGTERM: saved step {step}; exiting")
                break
    finally:
        ckpt.close()
        writer.close()
    finished = step == cfg.run.steps and not preempted.flag
    summary = {"step": step, "first_eval": first_eval, "last_eval": last_eval,
               "final_eval": final_eval}  # fmt: skip
    if finished and is_main:
        if cfg.run.export:
            out = models.save_pretrained(
                models.Model(mc, jax.device_get(merged(state))), workdir / "export", tokenizer
            )
            log(f"exported the policy to {out}")
        if (workdir / "metrics.jsonl").exists():
            plot.plot_runs([workdir], workdir / "curves.png")
        (workdir / DONE_MARKER).write_text(json.dumps(summary))
    return summary


def dry_run(cfg, workdir) -> dict:
    """Resolved config and per-device memory estimate, without loading weights."""
    cfg = config_lib.validate(cfg)
    if cfg.model.path == "random":
        tok = policy.load_tokenizer(cfg)
        from gbmpo_jax.models import presets

        mc = presets.model_config(cfg.model.random_shape, len(tok))
    else:
        with errors.phase(f"model.path={cfg.model.path!r}", "check that directory / file"):
            mc = models.load_config(policy.resolve_model_path(cfg.model.path))
    n_dev = jax.device_count() if cfg.mesh.num_devices == -1 else cfg.mesh.num_devices
    s = mesh_lib.axis_sizes(cfg.mesh, n_dev)
    est = memory.estimate(cfg, mc, data=s["data"], fsdp=s["fsdp"], tensor=s["tensor"])
    return {
        "workdir": str(workdir),
        "config": config_lib.to_dict(cfg),
        "resolved": {"objective.scale_rewards": policy.resolved_scale_rewards(cfg)},
        "mesh": s,
        "memory_per_device": {k: (memory.human(v) if k.endswith("bytes") else v)
                              for k, v in est.items()},
    }  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gbmpo_jax.train",
        description="GBMPO training. Overrides are dotted key=value pairs, e.g. run.steps=10.",
    )
    ap.add_argument("--exp", default="default", help="experiment name, optionally NAME:smoke")
    ap.add_argument("--workdir", default=None, help="run directory (default runs/DATE_NAME)")
    ap.add_argument("--dry-run", action="store_true", help="print config + memory, then exit")
    ap.add_argument("--debug", action="store_true", help="print tracebacks of input errors")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides (anywhere)")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = experiment.load(args.exp)
        cfg = config_lib.override(cfg, **config_lib.parse_overrides(args.overrides))
        cfg = config_lib.validate(cfg)
    except config_lib.ConfigError as e:
        return errors.report(e, debug=args.debug)
    workdir = pathlib.Path(args.workdir) if args.workdir else default_workdir(cfg.name)
    if not args.dry_run:
        distributed.initialize(cfg.mesh)  # before any other JAX call on multi-host runs
    try:
        if args.dry_run:
            print(json.dumps(dry_run(cfg, workdir), indent=2))
            return 0
        summary = run(cfg, workdir)
    except errors.user_errors() as e:
        # a locked workdir belongs to the other run: leave its directory alone
        log_file = None if isinstance(e, lock.WorkdirLockedError) else workdir / "error.log"
        return errors.report(e, debug=args.debug, log_file=log_file)
    print(json.dumps({"workdir": str(workdir), **dataclasses.asdict(cfg.run), **summary},
                     default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
