"""The CPU demo that `make train` runs: RL unlearns the mistake a tiny model was taught.

Launch:   make train                (= make train EXP=default; ARGS="run.seed=1" for another seed)
Hardware: this 2-core CPU, no accelerator, offline; about 1.5 GB of RAM.
What:     the "demo" model (a 4-layer Qwen2-shaped transformer, hidden 128, 0.8M parameters,
          character tokenizer) is first fitted by a supervised warm-up (1,200 AdamW steps,
          lr 1e-3 cosine, weight decay 0.1, batch 32; inside the same command) on
          demonstrations from an imperfect teacher: in 60% of the problems that need a carry or
          a borrow the demonstration drops it (task option teacher_error=0.6: "37 + 8" ->
          "#### 35"). Then GBMPO (ProbL2 regulariser towards the warm-up policy, lambda 0.1,
          Dr. GRPO advantages and loss, 16 prompts x G=8 at T=1, Adam lr 1e-4 cosine to 0) trains
          on the exact-answer reward alone for 250 steps. The warm-up output is both the RL
          starting point and the frozen reference policy.
Task:     "a op b =" with a two-digit a, a one-digit b and op in {+, -} (1,800 distinct
          problems), split by a hash of the text, so the 160 held-out validation problems
          scored (greedy) at RL step 0 and every 25 steps never appear in training. Prompt style
          "terse" (26 tokens with the chat template -> the 32-token bucket), answer "#### N".
Measured: `make train ARGS="run.seed=S"` on a 2-core CPU (idle, commit 2298f6d), greedy
          held-out accuracy at RL step 0 -> step 250: seed 0 61.3% -> 89.4% (+28.1 points,
          6m28s wall), seed 1 58.8% -> 92.5% (+33.8, 6m56s), seed 2 61.3% -> 96.3% (+35.0,
          7m00s); peak RSS 1.4 GB. Curves in runs/<date>-<time>_default/curves.png (seed 0 in
          docs/demo_curves.png). Tuning record: without warm-up weight decay seed 2 stayed on
          the plateau (5.6%); RL lr 2e-4 or G=16 x 8 prompts learned less (79% / 82% vs 91%
          at step 100 from the same start); a constant RL lr ended +22.5 to +25 (noisy end).
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
                ("teacher_error", "0.6"),
            ),
            "task.eval_size": 160,
            "task.max_prompt_len": 32,
            "rollout.prompts_per_step": 16,
            "rollout.group_size": 8,
            "rollout.max_new_tokens": 10,
            "rollout.temperature": 1.0,
            "objective.divergence": "prob_l2",
            "objective.coef": 0.1,
            "optim.lr": 1e-4,
            "optim.schedule": "cosine",
            "optim.warmup_ratio": 0.0,
            "warmup.steps": 1200,
            "warmup.batch_size": 32,
            "warmup.lr": 1e-3,
            "run.steps": 250,
            "run.eval_every": 25,
            "run.save_every_steps": 25,
        },
    )
    return _paper.smoke(cfg) if variant == "smoke" else cfg
