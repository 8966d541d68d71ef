"""SmolLM2-135M-Instruct (the GGUF `make install` ships) on real GSM8K with ProbL2.

Launch:   make train EXP=smollm2_gsm8k
Smoke:    make train EXP=smollm2_gsm8k:smoke
Hardware: any single GPU (about 1 h for 300 steps), or a CPU with a few hours to spare
          (a step of 4 prompts x G=8 with 256 new tokens takes minutes on 2 cores).
Data:     the GSM8K copy that ships with the package (task.source=bundled; the hub's
          openai/gsm8k holds the same rows: task.source=openai/gsm8k).
Expected: SmolLM2-135M starts near 2-4% greedy GSM8K validation accuracy; RL mostly fixes the
          answer format, so expect a few points of gain, not the paper's 4B-model numbers.
"""

import _paper

from gbmpo_jax.config import Config, override


def get_config(variant: str = ""):
    cfg = override(
        Config(),
        **{
            "name": "smollm2_gsm8k",
            "model.path": "smollm2",
            "task.name": "gsm8k",
            "task.source": "bundled",
            "task.eval_size": 100,
            "task.max_prompt_len": 384,
            "rollout.prompts_per_step": 4,
            "rollout.group_size": 8,
            "rollout.max_new_tokens": 256,
            "rollout.temperature": 0.7,
            "rollout.top_p": 0.95,
            "objective.divergence": "prob_l2",
            "objective.coef": 0.1,
            "objective.micro_batches": 4,
            "lora.rank": 32,
            "lora.alpha": 32.0,
            "optim.lr": 1e-4,
            "optim.schedule": "cosine",
            "run.steps": 300,
            "run.eval_every": 50,
            "run.save_every_steps": 25,
        },
    )
    return _paper.smoke(cfg) if variant == "smoke" else cfg
