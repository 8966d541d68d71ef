"""ES meta-learning of the neural mirror map on GSM8K (arXiv 2602.04380, section 4): Qwen3-4B + LoRA.

Launch:   make train EXP=gsm8k_es_meta   (= python -m gbmpo_jax.meta --exp gsm8k_es_meta)
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
Compare:  python -m gbmpo_jax.meta compare --exp gsm8k_es_meta --seeds 3 --workdir <es run>
          (each arm as the paper ran it: 1,000 steps on the full train split, then greedy
          accuracy on all 1,319 test problems)
Smoke:    python -m gbmpo_jax.meta --exp gsm8k_es_meta:smoke   (tiny random model, CPU)
Hardware: 10 x H100 (or a v5e-32 slice): meta.population_mode=mesh puts one member per
          slice of the `pop` axis; the frozen 4B base is shared, each member owns only its
          LoRA adapters and Adam state. One inner run = T=100 steps (~25 min); 15
          generations ~ 7 h. On one device use meta.population_mode=sequential (~70 h).
Fitness:  greedy accuracy on 256 problems of the validation split (20% of train, disjoint by
          id from inner_train: the paper's split overlapped ~80%); test is never seen by ES.
Expected: fitness rises by a few points over the reference-init map within 15 generations;
          then train in full with objective.mirror_params_path=<workdir>/mirror_mean.npz
          (paper: 85.1-85.5% test accuracy for the neural mirror arms).
"""

import _paper

from gbmpo_jax.config import override
from gbmpo_jax.meta import MetaCfg


def get_config(variant: str = ""):
    cfg = override(
        _paper.gsm8k("neural_mirror"),
        **{
            "name": "gsm8k_es_meta",
            "run.steps": 100,
            "run.eval_every": 0,
            "task.eval_size": 256,
            # ES trains on inner_train and scores fitness on validation (disjoint); the
            # paper-comparable final test evaluation belongs to `compare`
            "task.train_split": "inner_train",
            "task.eval_split": "validation",
            "task.final_eval_split": "",
        },
    )
    return _paper.smoke(cfg) if variant == "smoke" else cfg


def get_meta_config(variant: str = "") -> MetaCfg:
    if variant == "smoke":
        return MetaCfg(pop_size=4, generations=1, population_mode="vmap", eval_mean=False)
    return MetaCfg(pop_size=10, generations=15, population_mode="mesh", compare_steps=1000)
