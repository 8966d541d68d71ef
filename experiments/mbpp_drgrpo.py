"""MBPP with the kl regulariser: Qwen3-1.7B, full fine-tuning, paper settings (PAPER.md section 3).

Launch:   make train EXP=mbpp_drgrpo
Smoke:    make train EXP=mbpp_drgrpo:smoke      (tiny random model on CPU, 2 steps, ~1 min)
Hardware: 1 x H100 80GB (or a v5e-8 TPU slice), about 14 h.
Expected: MBPP test pass@1 about 60% (paper: 59.8).
"""

import _paper

from gbmpo_jax.config import override


def get_config(variant: str = ""):
    cfg = override(_paper.mbpp("kl"), name="mbpp_drgrpo")
    return _paper.smoke(cfg) if variant == "smoke" else cfg
