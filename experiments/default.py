"""The CPU demo that `make train` runs: a tiny model learns "37 + 8" arithmetic with GBMPO.

Launch:   make train                (= make train EXP=default)
Hardware: this 2-core CPU, no accelerator, offline.
What:     the "demo" model (a 4-layer Qwen2-shaped transformer, hidden 128, 0.8M parameters,
          character tokenizer) first fits the task with a short supervised warm-up on gold
          answers (inside the same command; warm-up lr 1e-3 - at 3e-3 the model cannot even
          memorise a fixed batch of 32 in 100 steps), then GBMPO with the ProbL2 regulariser
          (lambda 0.1, Dr. GRPO advantages and loss) trains it on rewards alone. The warm-up
          output is both the RL starting point and the frozen reference policy.
Task:     "What is a op b?" with a two-digit a, a one-digit b and op in {+, -}
          (task option last_digits=1): 1,800 distinct problems, split by a hash of the text,
          so the 160 held-out validation problems scored at every evaluation (greedy) never
          appear in training. Prompt style "terse" (user turn "37 + 8 =", 26 tokens with the
          chat template -> the 32-token padding bucket) and gold answer "short" ("#### 45").
Measured: NOT YET MEETING the +25-point target. Seed 0 on this shared 2-core CPU (load ~6):
          11m15s wall (5m03s user+sys CPU; faster when the machine is idle). Warm-up nll
          0.69 -> 0.43 (the plateau breaks only after ~250 steps); held-out greedy accuracy
          7.5% at RL step 0, then 1.9 / 3.8 / 3.8 / 4.4 / 3.8 / 2.5% at RL steps 25..150:
          RL at optim.lr 5e-4 from a policy this weak finds almost no reward (batch reward
          0-12%) and does not improve it. Next: a longer/stronger warm-up so that RL starts
          competent-but-noisy, and a lower RL lr. Curves in runs/<date>_default/curves.png.
Smoke:    make train EXP=default:smoke
"""

import _paper

from gbmpo_jax.config import Config, override


def get_config(variant: str = ""):
    cfg = override(
        Config(),
        **{
            "name": "default",
            "model.path": "random",
            "model.random_shape": "demo",
            "model.tokenizer": "char",
            "task.name": "arithmetic",
            "task.options": (
                ("digits", "2"),
                ("last_digits", "1"),
                ("operands", "2"),
                ("operations", "+-"),
                ("style", "terse"),
                ("answer", "short"),
            ),
            "task.eval_size": 160,
            "task.max_prompt_len": 32,
            "rollout.prompts_per_step": 8,
            "rollout.group_size": 8,
            "rollout.max_new_tokens": 10,
            "rollout.temperature": 1.0,
            "objective.divergence": "prob_l2",
            "objective.coef": 0.1,
            "optim.lr": 5e-4,
            "optim.schedule": "constant",
            "optim.warmup_ratio": 0.0,
            "warmup.steps": 400,
            "warmup.batch_size": 32,
            "warmup.lr": 1e-3,
            "run.steps": 150,
            "run.eval_every": 25,
            "run.save_every_steps": 25,
        },
    )
    return _paper.smoke(cfg) if variant == "smoke" else cfg
