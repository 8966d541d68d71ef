"""MBPP with the prob_l2 regulariser: Qwen3-1.7B, full fine-tuning, paper settings (arXiv 2602.04380, section 3).

Launch:   make train EXP=mbpp_probl2
Smoke:    make train EXP=mbpp_probl2:smoke      (tiny random model on CPU, 2 steps, ~1 min)
Rehearsal: make train EXP=mbpp_probl2:rehearsal   (the accelerator path on CPU: bf16 + fp32 master
          weights, remat, real Qwen3 tokenizer, sandbox, final test eval; tiny random model;
          needs `make qwen3-tokenizer`)
Lambda:   objective.coef = 0.1: the reference code's config class; its library wrapper uses 1e-4:
          ARGS="objective.coef=1e-4". The paper does not say which produced its numbers.
Reports:  greedy pass@1 on the 500 test problems of the hub's full MBPP
          (final/test_accuracy; offline, task.name=mbpp_sanitized task.source=bundled: 257).
Hardware: 1 x H100 80GB (or a v5e-8 TPU slice), about 14 h.
Expected: MBPP test pass@1 about 60% (paper: 60.2).
"""

import _paper

from gbmpo_jax.config import override


def get_config(variant: str = ""):
    cfg = override(_paper.mbpp("prob_l2"), name="mbpp_probl2")
    return _paper.variant(cfg, variant)
