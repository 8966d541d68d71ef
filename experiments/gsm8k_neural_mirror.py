"""GSM8K with the neural_mirror regulariser: Qwen3-4B-Instruct-2507 with LoRA r=64, paper settings (arXiv 2602.04380, section 3).

Launch:   make train EXP=gsm8k_neural_mirror
Smoke:    make train EXP=gsm8k_neural_mirror:smoke      (tiny random model on CPU, 2 steps, ~1 min)
Rehearsal: make train EXP=gsm8k_neural_mirror:rehearsal   (the accelerator path on CPU: bf16 + fp32 master
          weights, remat, real Qwen3 tokenizer, sandbox, final test eval; tiny random model;
          needs `make qwen3-tokenizer`)
Lambda:   objective.coef = 1e-4: the reference code (config class and wrapper agree).
Reports:  greedy accuracy on all 1,319 test problems (final/test_accuracy),
          after 1,000 steps on the full train split (7,473).
Hardware: 1 x H100 80GB (or a v5e-8 TPU slice), about 10 h.
Expected: GSM8K test accuracy about 85% with 24-36% shorter responses (paper: 85.1-85.5).
"""

import _paper

from gbmpo_jax.config import override


def get_config(variant: str = ""):
    cfg = override(_paper.gsm8k("neural_mirror"), name="gsm8k_neural_mirror")
    return _paper.variant(cfg, variant)
