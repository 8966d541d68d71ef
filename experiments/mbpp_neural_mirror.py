"""MBPP with the neural_mirror regulariser: Qwen3-1.7B, full fine-tuning, paper settings (arXiv 2602.04380, section 3).

Launch:   make train EXP=mbpp_neural_mirror
Smoke:    make train EXP=mbpp_neural_mirror:smoke      (tiny random model on CPU, 2 steps, ~1 min)
Rehearsal: make train EXP=mbpp_neural_mirror:rehearsal   (the accelerator path on CPU: bf16 + fp32 master
          weights, remat, real Qwen3 tokenizer, sandbox, final test eval; tiny random model;
          needs `make qwen3-tokenizer`)
Lambda:   objective.coef = 1e-4: the reference code (config class and wrapper agree).
Reports:  greedy pass@1 on the 500 test problems of the hub's full MBPP
          (final/test_accuracy; offline, task.name=mbpp_sanitized task.source=bundled: 257).
Hardware: 1 x H100 80GB (or a v5e-8 TPU slice), about 14 h.
Expected: MBPP test pass@1 about 60-61% (paper: 60.1-60.8).
"""

import _paper

from gbmpo_jax.config import override


def get_config(variant: str = ""):
    cfg = override(_paper.mbpp("neural_mirror"), name="mbpp_neural_mirror")
    return _paper.variant(cfg, variant)
