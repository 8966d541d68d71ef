"""MBPP / HumanEval rewards: extract the program from a completion, run the asserts sandboxed.

Paper: arXiv 2602.04380, section 3: the completion's code (fenced block extracted),
then ``test_setup_code``, then each assert in a separate process with a 5 s timeout; solved iff
every assert passes (binary, for evaluation); training may use partial credit passed / total.

Deviations:
  1. no shaping terms (the reference added length/format bonuses for training);
  2. the 5 s budget covers all asserts of one program (see ``sandbox``);
  3. of several fenced blocks the first one that defines a function or class is taken (models
     often append a usage example block), not the concatenation of all blocks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gbmpo_jax.tasks.rewards.sandbox import (
    CodeJob,
    CodeResult,
    Limits,
    SandboxUnavailableError,
    run_many,
    run_tests,
)

__all__ = [
    "CodeJob",
    "CodeResult",
    "Limits",
    "SandboxUnavailableError",
    "build_program",
    "code_rewards",
    "extract_code",
    "reward_from_result",
    "run_many",
    "run_tests",
]

_FENCE_RE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_START_RE = re.compile(r"^(?:def |class |import |from |@|async def )", re.MULTILINE)
_PY_TAGS = {"", "python", "py", "python3", "py3"}


def _compiles(src: str) -> bool:
    try:
        compile(src, "<completion>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def extract_code(completion: str) -> str:
    """The Python program in a completion.

    Fenced blocks (```python / ```py / bare ```; an unterminated last fence, as in a truncated
    completion, runs to the end): the first python block that defines a function or class,
    else the first python block. Without fences: the whole text if it compiles, else the text
    from the first line that starts like code (``def``, ``class``, ``import``, ``from``, ``@``).
    """
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    blocks = [body for tag, body in _FENCE_RE.findall(completion) if tag.lower() in _PY_TAGS]
    if blocks:
        defining = [b for b in blocks if re.search(r"^\s*(?:async\s+)?(?:def|class)\s", b, re.M)]
        return (defining or blocks)[0].strip("\n") + "\n"
    if _compiles(completion):
        return completion
    m = _CODE_START_RE.search(completion)
    return completion[m.start() :] if m else completion


def build_program(completion: str, *, entry_point: str | None = None, prompt_code: str = "") -> str:
    """The program to test.

    MBPP (no ``prompt_code``): the extracted code. HumanEval (``prompt_code`` is the signature
    and docstring): if the extracted code defines ``entry_point`` it is used whole, after the
    prompt's import lines; otherwise the completion is taken as the function body and appended
    to ``prompt_code``.
    """
    code = extract_code(completion)
    if not prompt_code:
        return code
    if entry_point and re.search(
        rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M
    ):
        header = [ln for ln in prompt_code.splitlines() if re.match(r"(?:import|from)\s", ln)]
        return "\n".join(header) + ("\n\n" if header else "") + code
    body = code if "```" in completion else completion
    return prompt_code + body


def reward_from_result(result: CodeResult, *, partial: bool) -> float:
    """Binary: 1.0 iff every assert passed. Partial: the fraction of asserts that passed."""
    return result.fraction if partial else float(result.all_passed)


def code_rewards(
    completions: Sequence[str],
    tests: Sequence[Sequence[str]],
    *,
    setup_codes: Sequence[str] | None = None,
    imports: Sequence[Sequence[str]] | None = None,
    entry_points: Sequence[str | None] | None = None,
    prompt_codes: Sequence[str] | None = None,
    partial: bool = False,
    timeout_s: float = 5.0,
    sandbox: str = "bwrap",
    max_workers: int | None = None,
    limits: Limits | None = None,
) -> tuple[list[float], list[CodeResult]]:
    """Score a batch of completions (one test list per completion) on a sandbox worker pool.

    Returns (rewards [N], CodeResults [N]); rewards are binary or, with ``partial``, fractions.
    """
    n = len(completions)
    if len(tests) != n:
        raise ValueError(
            f"got {n} completions but {len(tests)} test lists: pass one per completion"
        )
    setup_codes = list(setup_codes) if setup_codes is not None else [""] * n
    imports = list(imports) if imports is not None else [()] * n
    entry_points = list(entry_points) if entry_points is not None else [None] * n
    prompt_codes = list(prompt_codes) if prompt_codes is not None else [""] * n
    for name, seq in [("setup_codes", setup_codes), ("imports", imports),
                      ("entry_points", entry_points), ("prompt_codes", prompt_codes)]:  # fmt: skip
        if len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} completions")
    jobs = [
        CodeJob(build_program(c, entry_point=e, prompt_code=p), list(t), s, list(i), timeout_s)
        for c, t, s, i, e, p in zip(
            completions, tests, setup_codes, imports, entry_points, prompt_codes, strict=True
        )
    ]
    results = run_many(jobs, max_workers=max_workers, sandbox=sandbox, limits=limits)
    return [reward_from_result(r, partial=partial) for r in results], results
