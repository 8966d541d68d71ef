"""ES meta-learning of the neural mirror map on MBPP (arXiv 2602.04380, section 4): Qwen3-1.7B.

Launch:   make train EXP=mbpp_es_meta   (= python -m gbmpo_jax.meta --exp mbpp_es_meta)
          the reference's ES: add ARGS="meta.strategy=paper meta.sigma=0.01 meta.lr=0.01
          meta.sigma_decay=0.99" (P = 10 and 15 generations are already the defaults)
ES:       reproduced in both modes: N = P = 10 antithetic candidates, 15 generations, T = 100
          inner steps from the same base and seed for every candidate, fitness = greedy
          validation accuracy.
          default (meta.strategy=open_es): deviates in the update: evosax OpenES (centered
          ranks, Adam lr 0.05) with sigma 0.1 on z = softplus^-1(coefficients), a relative
          step that keeps every candidate convex.
          meta.strategy=paper: the reference's update (additive sigma 0.01 on the 380 raw
          coefficients, x0.99 per generation, step 0.01 on the raw-fitness gradient over the
          f > 0 pairs, accepted only if the mean fitness improves, else phi kept and the 2
          fittest (eps, f) pairs reused); deviates only in projecting candidates and phi onto
          coefficients >= 0 (the reference let them go negative: h non-convex, D < 0).
Compare:  python -m gbmpo_jax.meta compare --exp mbpp_es_meta --seeds 3 --workdir <es run>
          (each arm as the paper ran it: 1,600 steps, then greedy pass@1 on the full test split)
Smoke:    python -m gbmpo_jax.meta --exp mbpp_es_meta:smoke   (tiny random model, CPU, ~1-2 min)
Hardware: 1 x H100 80GB; one inner run = T=100 GBMPO steps (~55 min), members one at a time
          (full fine-tuning: P policies + Adam states do not fit one device), so 15
          generations x (10 + 1 mean) inner runs is about 150 GPU-hours; with a pop mesh axis
          (meta.population_mode=mesh on a v5e-64 / 8 x 8 H100) the members run side by side.
Fitness:  pass@1 (greedy, every assert) on the 90 validation problems (task_id 511-600),
          inner training on train (601-974); the test split (11-510) is never seen by ES.
Expected: fitness rises from the reference-init map's ~0.45 by a few points (the paper shows
          curves but no numbers); the learned map is then trained in full with
          objective.mirror_params_path=<workdir>/mirror_mean.npz (paper: 60.1-60.8 pass@1).
"""

import _paper

from gbmpo_jax.config import override
from gbmpo_jax.meta import MetaCfg


def get_config(variant: str = ""):
    cfg = override(
        _paper.mbpp("neural_mirror"),
        **{
            "name": "mbpp_es_meta",
            "run.steps": 100,
            "run.eval_every": 0,
            "task.eval_size": 90,
            # ES: inner runs on inner_train, fitness on validation; the final test
            # evaluation belongs to `compare`
            "task.train_split": "inner_train",
            "task.final_eval_split": "",
        },
    )
    return _paper.smoke(cfg) if variant == "smoke" else cfg


def get_meta_config(variant: str = "") -> MetaCfg:
    if variant == "smoke":
        return MetaCfg(pop_size=4, generations=1, population_mode="vmap", eval_mean=False)
    return MetaCfg(pop_size=10, generations=15, population_mode="sequential", compare_steps=1600)
