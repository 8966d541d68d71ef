"""CPU ES demo: evolve the neural mirror map on the tiny arithmetic model (arXiv 2602.04380 sec. 4).

Launch:   make train EXP=arith_es_meta   (= python -m gbmpo_jax.meta --exp arith_es_meta)
Smoke:    python -m gbmpo_jax.meta --exp arith_es_meta:smoke   (CI; tiny model, P=8, 2
          generations, no warm-up: 51 s wall on the shared 2-core box)
Hardware: 2-core CPU, offline; 10m45s wall, peak RSS 2.3 GB (idle machine, tcmalloc,
          members looped inside one program: commit bb599ae).
Inner:    the main CPU demo's problem (experiments/default.py, imported): the 0.8M-parameter
          "demo" model, character tokenizer, "a op b =" with teacher_error=0.6, the same
          1,200-step supervised warm-up (AdamW 1e-3 cosine, weight decay 0.1), run once for the
          whole ES run (the shared base policy and reference), then per member T = 20 GBMPO
          steps (16 prompts x G=8, Adam lr 1e-4 constant) with objective.divergence=neural_mirror
          at lambda = 30 (the paper's 1e-4 leaves the ~0.01-sized reference coefficients without
          effect here), fitness = greedy accuracy on the 160 validation problems (1 = 0.625 pt).
ES:       OpenES (antithetic, centered ranks, Adam lr 0.3), sigma 1.0, P = 8, 7 generations,
          the mean evaluated each generation, over z = (softplus^-1(coefficients), s) with one
          shared log-scale s: theta = e^s softplus(z) (meta.search_space=softplus_scale).
          Reproduces the paper's loop (antithetic candidates, T inner steps from one base and
          one seed for all members, greedy validation fitness, the ES mean carried forward);
          deviates in P, generations, T, lambda, the task / model, the update rule
          (meta.strategy=paper meta.sigma=0.01 meta.lr=0.01 meta.sigma_decay=0.99 runs the
          reference's) and the shared log-scale coordinate (why: below). `compare` uses
          mirror_mean.npz, --carry best the best member.
Calibration (same warm-up: base 59.4% greedy validation accuracy, completions 8 chars that
          stop): after T=20 steps at lambda 30 the reference map scaled x0.01 / x0.1 / x1 /
          x10 ends at 68.1% / 67.5% / 63.1% / 57.5%: the map's overall strength matters
          (~10 points). Scaling only c by x0.1 or x10: 62.5% both; three draws z0 + 3*eps:
          58.1-58.8%. Inner lr 3e-4 or 1e-3 constant lowers accuracy in 10 steps, so 1e-4.
Measured, without the log-scale (search over the 380 softplus coordinates only; commit
          ec362e6, 30m55s on a loaded box): NO signal. Population mean 63.1 -> 62.6, the mean's
          own fitness wandering 60.0-65.0 (+-2 problems), best 65.0 from generation 2 on:
          iid noise on 380 coordinates hardly moves the overall strength (member spread
          0.6-0.9 points; the ES mean's coefficient ratio to the start 1.05 / 1.12 / 0.91).
Measured, this configuration (commit 20d128c, 26m47s wall incl. the warm-up, peak RSS
          5.0 GB; the 2 cores were shared with the test suite for the first ~21 minutes), in %
          of the 160 validation problems (1 problem = 0.625):
            gen  population mean (std)  min..max     best so far   the ES mean's own fitness
            1    62.9 (1.2)             60.6..65.0   65.0          63.1
            2    63.0 (1.4)             61.3..65.6   65.6          62.5
            3    63.7 (4.3)             58.7..70.0   70.0          65.0
            4    65.5 (2.3)             62.5..70.6   70.6          65.0
            5    64.6 (1.6)             61.9..66.9   70.6          65.0
            6    65.2 (1.8)             61.9..67.5   70.6          66.9
            7    64.7 (2.5)             61.3..67.5   70.6          68.1
          The ES mean rises from 63.1 to 68.1, above the whole generation-1 population
          (max 65.0); the population mean by ~2 points. What ES learned is mostly the strength:
          the mean map's coefficients are 0.13-0.15x the reference's (geometric mean of v, w,
          b; a 0.34x, c 0.58x), i.e. a ~7x weaker regulariser, the calibration's best region.
          Curve: docs/es_curve.png (es_curve.png in the run directory).
          Re-run with the members looped inside one program (meta.member_chunk auto = 1 on
          this CPU) and tcmalloc preloaded (commit bb599ae, idle 2-core machine): the same
          table to the last digit, every generation; 10m45s wall, peak RSS 2.3 GB.
Compare (`python -m gbmpo_jax.meta compare --exp arith_es_meta --seeds 3 --workdir RUN`,
          commit 9c43475, 49m50s, 12 runs of T=20 steps on the full train split, greedy on
          the whole test split of 185 problems), test accuracy % mean +- std (seeds 0/1/2):
          KL (lambda 0.04) 78.4 +- 5.4 (70.8/82.2/82.2); ProbL2 (0.1) 78.6 +- 3.6
          (73.5/80.5/81.6); mirror, initial map (30) 78.2 +- 4.5 (71.9/81.1/81.6); mirror, ES
          mean (30) 79.5 +- 4.2 (73.5/82.2/82.7). Best by ~1 point, within the seed spread; no
          visible narrowing of the spread (the paper: +-0.2 vs +-0.6). Table and plot in the
          README (docs/es_compare.png) and in RUN/compare.{md,png}.
"""

import default as _demo  # experiments/default.py: the main CPU demo's task and warm-up

from gbmpo_jax.config import override
from gbmpo_jax.meta import MetaCfg


def get_config(variant: str = ""):
    cfg = override(
        _demo.get_config(""),  # task, model, 1,200-step warm-up, 16 prompts x G=8, 160 val
        **{
            "name": "arith_es_meta",
            "objective.divergence": "neural_mirror",
            "objective.coef": 30.0,
            "optim.lr": 1e-4,
            "optim.schedule": "constant",
            "optim.warmup_ratio": 0.0,
            "run.steps": 20,
            "run.eval_every": 0,
        },
    )
    if variant == "smoke":
        cfg = override(cfg, **{
            "name": "arith_es_meta:smoke", "model.random_shape": "tiny", "warmup.steps": 0,
            "task.eval_size": 4, "rollout.prompts_per_step": 2, "rollout.group_size": 2,
            "rollout.max_new_tokens": 6, "objective.mask_truncated_completions": False,
            "run.steps": 2, "run.save_every_steps": 1,
        })  # fmt: skip
    return cfg


def get_meta_config(variant: str = "") -> MetaCfg:
    if variant == "smoke":
        return MetaCfg(pop_size=8, generations=2, sigma=0.3, eval_mean=False)
    # the shared log-scale coordinate (meta.search_space=softplus_scale, a deviation): see
    # the docstring for the run without it, whose curve stayed flat
    return MetaCfg(pop_size=8, generations=7, sigma=1.0, lr=0.3, search_space="softplus_scale")
