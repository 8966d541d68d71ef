"""MBPP with the kl regulariser: Qwen3-1.7B, full fine-tuning, paper settings (arXiv 2602.04380, section 3).

Launch:   make train EXP=mbpp_drgrpo
Smoke:    make train EXP=mbpp_drgrpo:smoke      (tiny random model on CPU, 2 steps, ~1 min)
Rehearsal: make train EXP=mbpp_drgrpo:rehearsal   (the accelerator path on CPU: bf16 + fp32 master
          weights, remat, real Qwen3 tokenizer, sandbox, final test eval; tiny random model;
          needs `make qwen3-tokenizer`)
Lambda:   objective.coef = 0.04: TRL's original GRPO beta (DeepSeekMath); not in the reference code, whose
          TRL 0.23 defaults to 0.0 (objective.coef=0.0: unregularised Dr. GRPO).
Reports:  greedy pass@1 on the 500 test problems of the hub's full MBPP
          (final/test_accuracy; offline, task.name=mbpp_sanitized task.source=bundled: 257).
Hardware: 1 x H100 80GB (or a v5e-8 TPU slice), about 14 h.
Expected: MBPP test pass@1 about 60% (paper: 59.8).
"""

import _paper

from gbmpo_jax.config import override


def get_config(variant: str = ""):
    cfg = override(_paper.mbpp("kl"), name="mbpp_drgrpo")
    return _paper.variant(cfg, variant)
