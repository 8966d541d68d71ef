"""SmolLM2-135M-Instruct learns two-digit addition from rewards alone, on a 2-core CPU.

Launch:   make train EXP=smollm2_arith   (ARGS="run.seed=S" for another seed)
Hardware: a 2-core CPU, offline (the GGUF `make install` ships), about 16 minutes, 19 GB RAM
          (9.4 GB with objective.micro_batches=4);
          no warm-up, no teacher.
What:     the real pretrained instruct model answers "What is 37 + 48? Reply with just the
          number." (task option style=direct, its own default system prompt) greedily; RL on
          the exact-answer reward (GBMPO with ProbL2 towards the frozen start, Dr. GRPO
          advantages and loss) raises its held-out greedy accuracy.
Measured: (idle 2-core machine, commit eff2073, tcmalloc preloaded) greedy accuracy on the 200
          validation problems (the same 200 for every seed) at step 0 -> 10 -> 20 -> 30:
          seed 0 19.5 -> 42.5 -> 59.5 -> 67.0% (+47.5 points, 15m21s wall), seed 1 19.5 ->
          45.5 -> 59.0 -> 67.5% (+48.0, 16m31s), seed 2 19.5 -> 48.0 -> 60.0 -> 63.5%
          (+44.0, 15m52s); the 200 test problems: 25.5% at the start (`gbmpo_jax.evaluate
          --model smollm2 ... --max-new-tokens 16`) -> 66.0 / 63.5 / 63.0%. ~23 s a step
          (rollout ~2 s, update ~19 s, full fine-tuning, 30 layers unrolled); peak RSS 19 GB
          (activations of 64 rows x 30 layers kept for the backward); objective.micro_batches=4
          cuts it to 9.4 GB at ~27 s a step (4 steps measured, the same rewards).
Tuning:   at T = 1 the samples ramble past the length limit (90% truncated, rewards 3-5%); with
          truncated rows masked out of the loss, 4 steps at lr 1e-5 took greedy accuracy
          20.8% -> 0% (only short wrong answers were penalised, so the policy stopped
          answering briefly). Calibration (seed 0, 96 validation problems, lr 3e-6, eval
          every 6 steps): 20.8 -> 35.4 -> 44.8 -> 57.3 -> 68.8% at step 24.
"""

import _paper

from gbmpo_jax.config import Config, override


def get_config(variant: str = ""):
    cfg = override(
        Config(),
        **{
            "name": "smollm2_arith",
            "model.path": "smollm2",
            "model.scan_layers": False,  # the CPU setting (README "Speed on a CPU")
            "task.name": "arithmetic",
            "task.options": (
                ("digits", "2"),
                ("operands", "2"),
                ("operations", "+"),
                ("style", "direct"),
            ),  # fmt: skip
            "task.train_split": "train",
            "task.eval_split": "validation",
            "task.eval_size": 200,
            "task.final_eval_split": "test",  # all 810 test problems after the last step
            "task.final_eval_size": 0,
            "task.max_prompt_len": 64,
            "rollout.prompts_per_step": 8,
            "rollout.group_size": 8,
            # T = 1 samples ramble past the length limit (90% truncated, rewards 3-5%); at 0.7
            # a quarter of the samples are right, enough signal for groups of 8
            "rollout.max_new_tokens": 16,
            "rollout.temperature": 0.7,
            "objective.divergence": "prob_l2",
            "objective.coef": 0.1,
            # keep truncated rows in the loss: masked out, the only negative signal falls on
            # short wrong answers and the policy learns to stop answering (measured: 4 steps
            # at lr 1e-5 took greedy accuracy from 20.8% to 0, answers 14 -> 25 characters)
            "objective.mask_truncated_completions": False,
            "optim.lr": 3e-6,
            "optim.schedule": "constant",
            "optim.warmup_ratio": 0.0,
            "run.steps": 30,
            "run.eval_every": 10,
            "run.save_every_steps": 10,
        },
    )
    return _paper.smoke(cfg) if variant == "smoke" else cfg
