"""MBPP with the neural_mirror regulariser: Qwen3-1.7B, full fine-tuning, paper settings (PAPER.md section 3).

Launch:   make train EXP=mbpp_neural_mirror
Smoke:    make train EXP=mbpp_neural_mirror:smoke      (tiny random model on CPU, 2 steps, ~1 min)
Hardware: 1 x H100 80GB (or a v5e-8 TPU slice), about 14 h.
Expected: MBPP test pass@1 about 60-61% (paper: 60.1-60.8).
"""

import _paper

from gbmpo_jax.config import override


def get_config(variant: str = ""):
    cfg = override(_paper.mbpp("neural_mirror"), name="mbpp_neural_mirror")
    return _paper.smoke(cfg) if variant == "smoke" else cfg
