"""Prompt templates, one place per task; training and evaluation use the same prompt.

Paper: arXiv 2602.04380, section 3. A prompt is a chat conversation, a list of
``{"role", "content"}`` messages, rendered later by the tokenizer's chat template.

Deviations:
  1. MBPP: the reference trained with a different prompt than it evaluated with; here both use
     the evaluation prompt (problem, "Your code should pass these tests:", the asserts), plus
     an explicit request for one fenced python block, which ``rewards.code`` extracts.
  2. HumanEval (not in the paper) follows the same pattern: the signature and docstring in a
     fenced block, asking for the complete function.
"""

from __future__ import annotations

from collections.abc import Sequence

Messages = list[dict[str, str]]

MATH_SYSTEM = (
    "You are a careful math tutor. Solve step by step and provide the final numeric answer."
)
CODE_SYSTEM = "You are an expert Python programmer."
CODE_INSTRUCTION = "Write the complete solution in a single ```python code block."


def _messages(system: str, user: str) -> Messages:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def gsm8k_messages(question: str) -> Messages:
    """System: the math tutor; user: ``"Problem:\\n{question}"`` (paper, section 3)."""
    return _messages(MATH_SYSTEM, f"Problem:\n{question.strip()}")


def arithmetic_messages(question: str, style: str = "tutor") -> Messages:
    """``tutor``: the GSM8K prompt, so skills transfer both ways (real models). ``bare``: the
    question alone as the user turn, for character-level tiny models where a 90-character
    system prompt would triple the sequence length of the CPU demo. ``terse``: only the
    expression and ``=`` (``"What is 3 + 4?"`` -> ``"3 + 4 ="``), so that a chat-templated
    3-operand single-digit prompt fits 32 character tokens (the next shorter padding bucket).
    ``direct``: the question and "Reply with just the number." as the user turn, under the
    model's own default system prompt: a short greedy answer from a real instruct model
    (SmolLM2-135M-Instruct answers most "What is 37 + 48?" prompts with a number and stops)."""
    if style == "tutor":
        return gsm8k_messages(question)
    if style == "bare":
        return [{"role": "user", "content": question}]
    if style == "direct":
        return [{"role": "user", "content": f"{question} Reply with just the number."}]
    if style == "terse":
        if not (question.startswith("What is ") and question.endswith("?")):
            raise ValueError(f"terse style needs a 'What is <expr>?' question, got {question!r}")
        return [{"role": "user", "content": question[len("What is ") : -1] + " ="}]
    raise ValueError(f"arithmetic prompt style {style!r}: use 'tutor', 'bare', 'terse' or 'direct'")


def mbpp_messages(text: str, tests: Sequence[str]) -> Messages:
    """The problem text, then "Your code should pass these tests:" and the asserts."""
    asserts = "\n".join(t.strip() for t in tests)
    user = f"{text.strip()}\nYour code should pass these tests:\n\n{asserts}\n\n{CODE_INSTRUCTION}"
    return _messages(CODE_SYSTEM, user)


def humaneval_messages(prompt_code: str) -> Messages:
    """The function signature and docstring, asking for the complete function."""
    user = (
        "Complete the following Python function.\n\n"
        f"```python\n{prompt_code.rstrip()}\n```\n\n"
        "Write the complete function, with any imports it needs, in a single ```python "
        "code block."
    )
    return _messages(CODE_SYSTEM, user)


def validate_messages(messages: Sequence[dict]) -> None:
    """Raise ValueError naming the offending message unless ``messages`` is a chat list."""
    if isinstance(messages, str | bytes) or not len(messages):
        raise ValueError("a prompt must be a non-empty list of {'role', 'content'} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise ValueError(f"prompt message {i} must be a dict with keys 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(
                f"prompt message {i} has role {m['role']!r}: use system/user/assistant"
            )
        if not isinstance(m["content"], str):
            raise ValueError(f"prompt message {i} content must be a str")


def template_kwargs(pairs: Sequence[tuple[str, str]] | dict) -> dict:
    """Chat-template variables from `task.chat_template_kwargs` name:value pairs.

    "true"/"false" become booleans and integer strings ints, so the Jinja template sees
    ``enable_thinking is false`` (Qwen3's hybrid-thinking switch) as the reference code passes
    it; anything else stays a string."""
    out = {}
    for name, value in dict(pairs).items():
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("true", "false"):
                value = low == "true"
            elif low.lstrip("-").isdigit():
                value = int(low)
        out[str(name)] = value
    return out
