"""GSM8K with the kl regulariser: Qwen3-4B-Instruct-2507 with LoRA r=64, paper settings (PAPER.md section 3).

Launch:   make train EXP=gsm8k_drgrpo
Smoke:    make train EXP=gsm8k_drgrpo:smoke      (tiny random model on CPU, 2 steps, ~1 min)
Hardware: 1 x H100 80GB (or a v5e-8 TPU slice), about 10 h.
Expected: GSM8K test accuracy about 81% (paper: 81.2).
"""

import _paper

from gbmpo_jax.config import override


def get_config(variant: str = ""):
    cfg = override(_paper.gsm8k("kl"), name="gsm8k_drgrpo")
    return _paper.smoke(cfg) if variant == "smoke" else cfg
