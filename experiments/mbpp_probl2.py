"""MBPP with the prob_l2 regulariser: Qwen3-1.7B, full fine-tuning, paper settings (PAPER.md section 3).

Launch:   make train EXP=mbpp_probl2
Smoke:    make train EXP=mbpp_probl2:smoke      (tiny random model on CPU, 2 steps, ~1 min)
Hardware: 1 x H100 80GB (or a v5e-8 TPU slice), about 14 h.
Expected: MBPP test pass@1 about 60% (paper: 60.2).
"""

import _paper

from gbmpo_jax.config import override


def get_config(variant: str = ""):
    cfg = override(_paper.mbpp("prob_l2"), name="mbpp_probl2")
    return _paper.smoke(cfg) if variant == "smoke" else cfg
