"""CPU ES demo: evolve the neural mirror map of a tiny arithmetic model (PAPER.md section 4).

Launch:   make train EXP=arith_es_meta   (= python -m gbmpo_jax.meta --exp arith_es_meta)
Smoke:    python -m gbmpo_jax.meta --exp arith_es_meta:smoke   (CI; P=8, 2 generations)
Hardware: this 2-core CPU, offline. The 0.9M-parameter demo model gets a short supervised
          warm-up once (the shared base policy and reference; its own settings below, not the
          default demo's), then P=8 members
          (vmap, one program per inner step) each run T=10 GBMPO steps with their own mirror
          map and are scored by greedy accuracy on 64 validation problems. Wall time not yet
          measured end to end (the smoke variant: ~1 min of CPU, 2-4 min on the shared box).
What:     lambda = 1.0 (instead of the paper's 1e-4) so the mirror map actually shapes the
          inner runs of this small demo; OpenES (antithetic, centered ranks, Adam 0.05) over
          z = softplus^-1(coefficients), sigma 0.3. Reproduces the paper's ES loop (antithetic
          candidates, T inner steps from one base and seed, greedy validation fitness); deviates
          in P = 8, 6 generations, T = 10 and the update rule (meta.strategy=paper
          meta.sigma=0.01 meta.lr=0.01 meta.sigma_decay=0.99 runs the reference's). `compare`
          uses mirror_mean.npz (the ES mean), --carry best the best member.
Expected (not yet run to completion): es/fitness_best above the generation-1 mean; the curve
          in es_curve.png, the learned h'(y) in mirror_slope.png, the maps in
          mirror_{best,mean}.npz.
"""

from gbmpo_jax.config import Config, override
from gbmpo_jax.meta import MetaCfg


def get_config(variant: str = ""):
    cfg = override(
        Config(),
        **{
            "name": "arith_es_meta",
            "model.path": "random",
            "model.random_shape": "demo",
            "model.tokenizer": "char",
            "task.name": "arithmetic",
            "task.options": (("digits", "2"), ("operations", "+-"), ("style", "bare")),
            "task.eval_size": 64,
            "task.max_prompt_len": 64,
            "rollout.prompts_per_step": 4,
            "rollout.group_size": 8,
            "rollout.max_new_tokens": 16,
            "rollout.temperature": 1.0,
            "objective.divergence": "neural_mirror",
            "objective.coef": 1.0,
            "optim.lr": 1e-3,
            "optim.schedule": "constant",
            "optim.warmup_ratio": 0.0,
            "warmup.steps": 120,
            "warmup.batch_size": 32,
            "warmup.lr": 3e-3,
            "warmup.schedule": "constant",
            "warmup.weight_decay": 0.0,
            "run.steps": 10,
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
    return MetaCfg(pop_size=8, generations=6, sigma=0.3)
