"""ES meta-learning of the neural mirror map (GBMPO, arXiv 2602.04380, section 4).

Entry points (`make train EXP=<name>_es_meta` dispatches here):
  python -m gbmpo_jax.meta --exp NAME[:smoke] [--workdir DIR] [key=value ...]
  python -m gbmpo_jax.meta compare --exp NAME --seeds S [--workdir DIR] [--carry mean|best]
                                   [--mirror F.npz] [...]
Overrides: run-config keys as in train.py (`run.steps=4` = T inner steps) and ``meta.``-prefixed
`MetaCfg` fields (`meta.pop_size=8 meta.strategy=paper`).

An ES experiment file defines ``get_config(variant) -> Config`` (the inner run: T =
run.steps GBMPO steps with objective.divergence=neural_mirror, fitness on task.eval_split)
and ``get_meta_config(variant) -> MetaCfg``.

One generation (pure ES core in `es`, inner runs in `population`):
  z [P,380] = ask(key_g, state)  ->  mirror params = adapter(z) (all >= 0; z is softplus^-1
  of the coefficients for the evosax strategies, the coefficients themselves for ``paper``)
  -> fitness [P] = greedy validation accuracy after T inner steps (common random numbers;
     rows the strategy already scored, the paper ES's reused elites, keep its fitness)
  -> state = tell(key_g, z, fitness, state)   (es: maximised; evosax's sign flip in `es`)
Keys come from (meta.seed, generation), so a resumed run repeats an uninterrupted one.
The mean's fitness (the meta-learning curve) is an extra inner run when meta.eval_mean.

Resume: the ES state (mean, optimizer state, sigma, generation), the best member so far and
the history are checkpointed (Orbax, `checkpoint.Checkpointer`) after every generation;
a restart refuses a different config, truncates metrics.jsonl and continues at gen + 1.
One process writes a workdir (`lock.RunLock`); checkpoints are verified before use.

Outputs in the workdir: metrics.jsonl + tb/ (es/fitness_{mean,std,min,max,best}, es/sigma,
es/update_norm, es/mean_fitness, es/member_fitness/<i>; paper: es/accepted, es/successful,
es/reused, es/grad_norm), es_curve.png, mirror_mean.npz and mirror_best.npz (keys v,w,b,a,c;
train with objective.mirror_params_path=...), mirror_slope.png (h'(y) of the learned maps
against the initial map), DONE.

What is carried forward: ``mirror_mean.npz``, the ES mean (the reference's phi, which its
code saves and reuses), is the result; `compare` trains with it unless ``--carry best``
picks ``mirror_best.npz``, the single fittest member seen (selection-biased: the max of P
noisy fitnesses per generation), or ``--mirror`` names another file.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from gbmpo_jax import config as config_lib
from gbmpo_jax import errors, experiment
from gbmpo_jax.es import population
from gbmpo_jax.es import report as es_report
from gbmpo_jax.es import strategies as es
from gbmpo_jax.rl.divergences import validate_mirror_params
from gbmpo_jax.workdir import checkpoint, lock, metrics

DONE_MARKER = "DONE"
# `compare --carry`: which map an ES run hands on -> (file in its workdir, table label)
CARRY = {
    "mean": ("mirror_mean.npz", "neural mirror (ES)"),  # the reference's phi (default)
    "best": ("mirror_best.npz", "neural mirror (ES best member)"),
}


@dataclasses.dataclass(frozen=True)
class MetaCfg:
    strategy: str = "open_es"  # a key of es.STRATEGIES: open_es | snes | cma_es | paper
    pop_size: int = 8  # P, even (antithetic pairs)
    generations: int = 15
    # initial perturbation std: in z = softplus^-1(coefficients) for open_es / snes / cma_es,
    # added to the raw coefficients for paper (the reference: 0.01)
    sigma: float = 0.1
    lr: float = 0.05  # mean step (Adam for open_es, sgd for snes, raw step for paper: 0.01)
    sigma_decay: float = 1.0  # per generation (open_es, paper)
    population_mode: str = "vmap"  # vmap | mesh | sequential (population.MODES)
    # vmap mode: members vmapped together per loop iteration of the one program; 0 = auto
    # (population.auto_chunk: by backend and rows per member), P = all at once
    member_chunk: int = 0
    seed: int = 0  # ES keys: fold_in(key(seed), generation)
    eval_mean: bool = True  # also run the mean candidate each generation (the curve)
    keep: int = 3  # ES checkpoints kept
    compare_kl_coef: float = 0.04  # lambda for the KL arm of `compare`
    compare_probl2_coef: float = 0.1  # lambda for the ProbL2 arm of `compare`
    compare_steps: int = 0  # training length of each `compare` run; 0 = run.steps
    compare_train_split: str = "train"  # `compare` trains as the paper did, on the full split
    # search space of the evosax strategies (es.SPACES): softplus (the paper's 380
    # coefficients) | softplus_scale (plus one shared log-scale coordinate; a deviation).
    # The paper strategy always searches the raw coefficients ("coef").
    search_space: str = "softplus"


def validate_meta(m: MetaCfg) -> MetaCfg:
    def check(cond, key, msg):
        if not cond:
            raise config_lib.ConfigError(f"meta.{key}: {msg}")

    try:
        es.check(m.strategy, m.pop_size)
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    check(m.search_space in es.SPACES and m.search_space != "coef", "search_space",
          f"{m.search_space!r}: use softplus or softplus_scale (the paper strategy searches "
          "the raw coefficients by itself)")  # fmt: skip
    check(m.strategy != "paper" or m.search_space == "softplus", "search_space",
          "the paper strategy searches the raw coefficients: leave meta.search_space=softplus")  # fmt: skip
    check(m.generations >= 1, "generations", "must be >= 1")
    check(m.sigma > 0 and m.lr > 0, "sigma / meta.lr", "must be > 0")
    check(0 < m.sigma_decay <= 1, "sigma_decay", "must be in (0, 1]")
    check(m.population_mode in population.MODES, "population_mode",
          f"{m.population_mode!r} not in {list(population.MODES)}")  # fmt: skip
    check(m.keep >= 1, "keep", "must be >= 1")
    check(m.member_chunk >= 0, "member_chunk", f"{m.member_chunk}: must be >= 0 (0 = auto)")
    return m


def validate_inner(cfg: config_lib.Config) -> config_lib.Config:
    cfg = config_lib.validate(cfg)
    t = cfg.task
    if cfg.objective.divergence != "neural_mirror":
        raise config_lib.ConfigError(
            f"objective.divergence={cfg.objective.divergence!r}: ES evolves the neural mirror "
            "map; set objective.divergence=neural_mirror"
        )
    if not t.eval_split or "test" in (t.eval_split, t.train_split):
        raise config_lib.ConfigError(
            f"task.train_split={t.train_split!r} / task.eval_split={t.eval_split!r}: ES fitness "
            "needs a validation split and never the test split (use inner_train / validation)"
        )
    return cfg


def load(name: str) -> tuple[config_lib.Config, MetaCfg]:
    """(inner run config, MetaCfg) of experiment ``name[:variant]``."""
    cfg = experiment.load(name)
    base, _, variant = name.partition(":")
    path = experiment.experiments_dir() / f"{base}.py"
    spec = importlib.util.spec_from_file_location(f"gbmpo_experiments.{base}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_meta_config"):
        raise config_lib.ConfigError(
            f"{path} defines no get_meta_config(variant): not an ES experiment (*_es_meta)"
        )
    return cfg, module.get_meta_config(variant)


def split_overrides(args: list[str]) -> tuple[dict, dict]:
    ov = config_lib.parse_overrides(args)
    meta = {k[len("meta.") :]: v for k, v in ov.items() if k.startswith("meta.")}
    return {k: v for k, v in ov.items() if not k.startswith("meta.")}, meta


def _fold(seed: int, gen: int):
    k = jax.random.fold_in(jax.random.key(seed), gen)
    return jax.random.split(k)


def _members(params: dict, p: int) -> None:
    host = jax.device_get(params)
    for i in range(p):
        validate_mirror_params({k: v[i] for k, v in host.items()})


def run(cfg: config_lib.Config, mcfg: MetaCfg, workdir, *, log=print) -> dict:
    """Runs (or resumes) ES in ``workdir``, holding its lock; returns a summary dict."""
    cfg, mcfg = validate_inner(cfg), validate_meta(mcfg)
    with lock.RunLock(workdir):
        return _run(cfg, mcfg, workdir, log=log)


def _run(cfg: config_lib.Config, mcfg: MetaCfg, workdir, *, log=print) -> dict:
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    from gbmpo_jax.train import setup

    model, tokenizer, obj, td = setup(cfg, log)
    if cfg.warmup.steps:
        model = _warm_base(cfg, model, obj, td, tokenizer, log)
    space = "coef" if mcfg.strategy == "paper" else mcfg.search_space
    adapter = es.mirror_adapter(space)  # z (evosax) or the raw coefficients (paper)
    strategy = es.get(mcfg.strategy, mcfg.pop_size, sigma=mcfg.sigma, lr=mcfg.lr,
                      sigma_decay=mcfg.sigma_decay, dim=adapter.dim)  # fmt: skip
    z0 = adapter.from_params(jax.device_get(obj.div_params))
    rows = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    chunk = mcfg.member_chunk or population.auto_chunk(rows, mcfg.pop_size)
    programs = {"vmap": population.make_programs(cfg, model, tokenizer, obj, td, None, chunk)}
    if mcfg.population_mode == "vmap":
        log(f"population: {mcfg.pop_size} members, {chunk} vmapped per program iteration")
    if mcfg.population_mode == "mesh":
        mesh = population.pop_mesh(mcfg.pop_size)
        programs["mesh"] = population.make_programs(cfg, model, tokenizer, obj, td, mesh)
        log(f"mesh {dict(mesh.shape)} for {mcfg.pop_size} members")
    configs = {"config": config_lib.to_dict(cfg), "meta_config": dataclasses.asdict(mcfg)}

    k_init, _ = _fold(mcfg.seed, 0)
    state = {"es": strategy.init(k_init, z0), "best_z": jnp.asarray(z0),
             "best_fitness": jnp.asarray(-jnp.inf, jnp.float32)}  # fmt: skip
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=mcfg.keep, every_steps=1)
    history: list[dict] = []
    start = ckpt.latest_good_step(log)  # a step that fails its integrity check is skipped
    if start is not None:
        saved = ckpt.restore_meta(start)
        _check_same(saved, configs)
        state, meta = ckpt.restore(start, state)
        history = meta["history"]
        metrics.rewind(workdir, start)
        log(f"resumed ES from generation {start} in {workdir}")
    else:
        metrics.rewind(workdir, -1)  # a fresh start: no record of an earlier run stays
    start = start or 0
    (workdir / "config.json").write_text(json.dumps(configs, indent=2))
    writer = metrics.Writer(workdir)
    steps = cfg.run.steps
    try:
        for gen in range(start + 1, mcfg.generations + 1):
            k_ask, k_tell = _fold(mcfg.seed, gen)
            mean_z = strategy.mean(state["es"])
            pop, es_state = strategy.ask(k_ask, state["es"])
            # rows the strategy already scored (the paper ES's reused elites) keep that fitness
            reused, known = (np.asarray(x) for x in jax.device_get(strategy.reused(es_state)))
            params = adapter.to_params(pop)
            _members(params, mcfg.pop_size)  # host check: convex, D >= 0 (cannot fail by design)
            res = _evaluate(programs, mcfg.population_mode, params, steps, reused)
            rec = {}
            if mcfg.eval_mean:
                mres = population.run_population(
                    programs, "sequential", adapter.to_params(mean_z[None]), steps
                )
                rec["es/mean_fitness"] = float(mres.fitness[0])
                rec["es/mean_length"] = float(mres.aux["eval/mean_length"][0])
            f = np.where(reused, known, res.fitness).astype(np.float32)  # what tell uses
            es_state, m = strategy.tell(k_tell, pop, jnp.asarray(f), es_state)
            i_best = int(np.argmax(f))
            if f[i_best] > float(state["best_fitness"]):
                state = dict(state, best_z=pop[i_best], best_fitness=jnp.asarray(f[i_best]))
            state = dict(state, es=es_state)
            rec.update({
                "es/fitness_mean": float(f.mean()), "es/fitness_std": float(f.std()),
                "es/fitness_min": float(f.min()), "es/fitness_max": float(f.max()),
                "es/fitness_best": float(state["best_fitness"]),
                **{k: float(v) for k, v in jax.device_get(m).items()},
                **{f"es/member_fitness/{i}": float(x) for i, x in enumerate(f)},
                **{f"es/{k}_mean": float(np.nanmean(v)) for k, v in res.aux.items()},
            })  # fmt: skip
            writer.scalars(gen, rec)
            writer.histogram(gen, "es/fitness", f)
            history.append({"generation": gen, "fitness": f.tolist(), **rec})
            log(f"gen {gen}/{mcfg.generations}: " + " ".join(
                f"{k.split('/')[-1]}={rec[k]:.4g}" for k in
                ("es/fitness_mean", "es/fitness_max", "es/fitness_best", "es/sigma")))  # fmt: skip
            ckpt.save(gen, state, {**configs, "generation": gen, "history": history}, force=True)
    finally:
        ckpt.close()
        writer.close()
    out = es_report.write_outputs(workdir, history, adapter, state["best_z"],
                                  strategy.mean(state["es"]), z0)  # fmt: skip
    summary = {"generations": mcfg.generations, "best_fitness": float(state["best_fitness"]),
               "last": history[-1] if history else {}, **{k: str(v) for k, v in out.items()}}  # fmt: skip
    (workdir / DONE_MARKER).write_text(json.dumps(summary, default=str))
    return summary


def _evaluate(programs, mode, params, steps, reused) -> population.InnerResult:
    """Inner runs of the members the ES has not scored yet. ``sequential`` skips the
    ``reused`` rows (NaN in the result); ``vmap`` / ``mesh`` run all P (one program shape,
    the extra rows' fitness is discarded)."""
    if mode != "sequential" or not reused.any():
        return population.run_population(programs, mode, params, steps)
    idx = np.flatnonzero(~reused)
    part = population.run_population(programs, mode, jax.tree.map(lambda x: x[idx], params), steps)
    out = {}
    for k, v in {"fitness": part.fitness, **part.aux}.items():
        out[k] = np.full(reused.shape, np.nan, np.float32)
        out[k][idx] = v
    fitness = out.pop("fitness")
    return population.InnerResult(fitness, out)


def _warm_base(cfg, model, obj, td, tokenizer, log):
    """The supervised warm-up of train.py, once: the shared base policy and reference of
    every member (deterministic in run.seed, so a resumed ES run gets the same base)."""
    from gbmpo_jax import models, train
    from gbmpo_jax.rl import program

    st = program.init_state(cfg, model.params, obj)
    warm = train.supervised_warmup(cfg, st, obj, td, tokenizer, log)
    return models.Model(model.config, warm.frozen)  # full FT: frozen == params; LoRA: base


def _check_same(saved: dict, now: dict) -> None:
    checkpoint.check_compatible(saved["config"], config_lib.from_dict(now["config"]))
    # member_chunk only regroups the same per-member programs (speed, float rounding)
    resumable = {"generations", "keep", "compare_kl_coef", "compare_probl2_coef", "compare_steps",
                 "compare_train_split", "member_chunk"}  # fmt: skip
    bad = {k: (v, now["meta_config"].get(k)) for k, v in saved["meta_config"].items()
           if k not in resumable and now["meta_config"].get(k) != v}  # fmt: skip
    if bad:
        lines = "\n".join(f"  meta.{k}: checkpoint={a!r} now={b!r}" for k, (a, b) in bad.items())
        raise checkpoint.CheckpointMismatchError(
            f"the workdir holds an ES checkpoint from a different meta config:\n{lines}\n"
            "use a fresh --workdir, or rerun with the checkpoint's values"
        )


def compare(
    cfg, mcfg, mirror_path, seeds: int, workdir, *, carry: str = "mean", log=print
) -> list[dict]:
    """KL, ProbL2, the neural mirror at its initial map (objective.mirror_init: the paper's
    random-init arm and the ES starting point) and the ES map (``mirror_path``; ``carry``
    names it in the table: the ES mean, as the reference, or the best member), each over
    ``seeds`` seeds
    (run.seed, +1, ...) with `train.run` as the paper ran them: ``meta.compare_steps`` steps
    (the experiment sets the paper's length; 0 = run.steps) on ``meta.compare_train_split``,
    then greedy accuracy on the *whole* test split (`final/test_*`; never used by ES)."""
    from gbmpo_jax import train

    base = config_lib.override(cfg, **{
        "task.train_split": mcfg.compare_train_split, "task.eval_split": "test",
        "task.final_eval_split": "test", "task.final_eval_size": 0, "run.export": False,
        "run.steps": mcfg.compare_steps or cfg.run.steps,
    })  # fmt: skip
    arms = {  # slug -> (table label, overrides)
        "kl": ("Dr. GRPO (KL)", {"objective.divergence": "kl",
                                 "objective.coef": mcfg.compare_kl_coef}),
        "prob_l2": ("ProbL2", {"objective.divergence": "prob_l2",
                               "objective.coef": mcfg.compare_probl2_coef}),
        "mirror_init": ("neural mirror (random init)", {"objective.divergence": "neural_mirror",
                                                        "objective.mirror_params_path": ""}),
        "mirror_es": (CARRY[carry][1], {"objective.divergence": "neural_mirror",
                                        "objective.mirror_params_path": str(mirror_path)}),
    }  # fmt: skip
    rows = []
    for slug, (arm, ov) in arms.items():
        accs, lens = [], []
        for s in range(seeds):
            c = config_lib.override(base, **ov, **{"run.seed": cfg.run.seed + s})
            wd = pathlib.Path(workdir) / "compare" / f"{slug}_seed{c.run.seed}"
            out = train.run(c, wd, log=log)["final_eval"]
            accs.append(out["final/test_accuracy"])
            lens.append(out["final/test_mean_completion_chars"])
        rows.append({"method": arm, "acc_mean": float(np.mean(accs)), "accs": accs,
                     "acc_std": float(np.std(accs)), "length_mean": float(np.mean(lens)),
                     "seeds": seeds, "test_problems": out["final/test_problems"]})  # fmt: skip
    return rows


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv.pop(0) if argv and argv[0] == "compare" else "run"
    ap = argparse.ArgumentParser(prog=f"python -m gbmpo_jax.meta{' compare' * (cmd == 'compare')}",
                                 description=__doc__.split("\n\n")[0])  # fmt: skip
    ap.add_argument("--exp", required=True, help="ES experiment, e.g. arith_es_meta:smoke")
    ap.add_argument("--workdir", default=None, help="run directory (default runs/DATE_NAME)")
    if cmd == "compare":
        ap.add_argument("--seeds", type=int, default=3)
        ap.add_argument("--carry", choices=sorted(CARRY), default="mean",
                        help="which map of the ES run: mean = the ES mean (the reference's phi, "
                        "default), best = the best single member (selection-biased)")  # fmt: skip
        ap.add_argument("--mirror", default=None,
                        help=".npz to use instead (default WORKDIR/mirror_<carry>.npz)")  # fmt: skip
    ap.add_argument("--debug", action="store_true", help="print tracebacks of input errors")
    ap.add_argument("overrides", nargs="*", help="key=value (anywhere); meta.* for MetaCfg")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg, mcfg = load(args.exp)
        run_ov, meta_ov = split_overrides(args.overrides)
        cfg = validate_inner(config_lib.override(cfg, **run_ov))
        mcfg = validate_meta(config_lib.override(mcfg, **meta_ov))
    except (config_lib.ConfigError, ValueError) as e:
        return errors.report(e, debug=args.debug)
    from gbmpo_jax.train import default_workdir

    workdir = pathlib.Path(args.workdir) if args.workdir else default_workdir(cfg.name)
    try:
        if cmd == "compare":
            mirror = pathlib.Path(args.mirror or workdir / CARRY[args.carry][0])
            if not mirror.is_file():
                raise config_lib.ConfigError(f"--mirror {mirror} not found: run ES first")
            if args.seeds < 1:
                raise config_lib.ConfigError("--seeds must be >= 1")
            rows = compare(cfg, mcfg, mirror, args.seeds, workdir, carry=args.carry)
            es_report.write_compare(workdir, rows)  # compare.md + compare.png
            print(es_report.table(rows))
            return 0
        summary = run(cfg, mcfg, workdir)
    except errors.user_errors() as e:
        # a locked workdir belongs to the other run: leave its directory alone
        locked = isinstance(e, lock.WorkdirLockedError)
        log_file = None if locked or not workdir.is_dir() else workdir / "error.log"
        return errors.report(e, debug=args.debug, log_file=log_file)
    print(json.dumps({"workdir": str(workdir), **summary}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
