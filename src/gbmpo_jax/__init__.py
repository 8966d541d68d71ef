"""gbmpo-jax: GRPO-family RL post-training with Bregman-divergence regularisers in JAX.

Paper: Yuan, Khandoga, Sankarapu, "Beyond KL Divergence: Policy Optimization with Flexible
Bregman Divergences for LLM Reasoning", arXiv 2602.04380.
"""

__version__ = "0.1.0"
