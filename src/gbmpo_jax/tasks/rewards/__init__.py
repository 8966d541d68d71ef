"""Verifiable rewards: math answer matching and sandboxed code execution.

``math``: ``extract_answer``, ``gsm8k_reward``. ``code``: ``extract_code``, ``build_program``,
``code_rewards`` (binary or partial credit over a sandbox pool). ``sandbox``: ``run_tests``,
``run_many``, ``CodeResult``, ``Limits`` (bubblewrap isolation; ``_runner.py`` is the harness
that runs inside it).
"""

from gbmpo_jax.tasks.rewards.code import build_program, code_rewards, extract_code
from gbmpo_jax.tasks.rewards.math import extract_answer, gsm8k_reward
from gbmpo_jax.tasks.rewards.sandbox import SANDBOX_MODES as SANDBOXES
from gbmpo_jax.tasks.rewards.sandbox import (
    CodeJob,
    CodeResult,
    Limits,
    SandboxUnavailableError,
    run_many,
    run_tests,
)

# task.reward of code tasks: every assert passes (1/0) | the fraction of asserts passed
REWARD_MODES = ("binary", "partial")

__all__ = [
    "REWARD_MODES",
    "SANDBOXES",
    "CodeJob",
    "CodeResult",
    "Limits",
    "SandboxUnavailableError",
    "build_program",
    "code_rewards",
    "extract_answer",
    "extract_code",
    "gsm8k_reward",
    "run_many",
    "run_tests",
]
