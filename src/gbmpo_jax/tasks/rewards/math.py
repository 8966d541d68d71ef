"""Final-answer extraction and the GSM8K reward.

Paper: arXiv 2602.04380, section 3: the gold answer is the text after ``####`` with
commas removed; the prediction is the last number in the completion (commas removed, simple
fractions a/b as floats); correct iff |pred - gold| <= 1e-4 * |gold| (reward 1, else 0).

Extraction order (first rule that yields a number wins):
  1. the last ``#### <answer>`` marker (the GSM8K gold format, and what SFT'd models emit);
  2. the last ``\\boxed{...}`` (nested braces; ``\\frac{a}{b}``, ``\\dfrac`` read as a/b);
  3. the last "answer is / answer: / final answer" phrase followed by a number;
  4. the last number anywhere in the text.
Numbers may carry ``$``, ``%``, thousands commas, a sign, decimals or a simple fraction ``a/b``;
units and trailing punctuation are ignored.

Deviations from the reference code:
  1. rules 1-3 come before the last-number fallback, so "The answer is 42. Check: 42 - 2 = 40"
     scores 42, not 40 (the reference took the last number only);
  2. the tolerance is relative with an absolute floor of 1e-9 so that a gold of 0 is reachable.
"""

from __future__ import annotations

import math
import re

REL_TOL = 1e-4
ABS_TOL = 1e-9

# A number: optional sign and currency, digits with optional thousands commas or plain digits,
# an optional decimal part, optional "/denominator". Commas must group exactly 3 digits so that
# "1,2,3" (a list) is not read as 123.
_NUM = (
    r"(?<![\w.])[-+\u2212]?(?:\$ ?)?"
    r"(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?"
    r"(?: ?/ ?\d+(?:\.\d+)?)?"
)
_NUM_RE = re.compile(_NUM)
_HASH_RE = re.compile(r"####\s*([^\n]*)")
_ANSWER_RE = re.compile(
    r"(?:final\s+answer|answer)\b\s*(?:is|:|=|will be|would be)?\s*[:=]?\s*(?:\*\*)?\s*([^\n]*)",
    re.IGNORECASE,
)
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")


def _numbers(text: str) -> list[str]:
    """All number tokens in ``text``, normalised (no ``$``, commas or spaces), in order."""
    out = []
    for m in _NUM_RE.finditer(text):
        tok = m.group(0)
        if not re.search(r"\d", tok):
            continue
        tok = re.sub(r"[\s$,]", "", tok.replace("\u2212", "-"))
        if tok.startswith("+"):
            tok = tok[1:]
        out.append(tok)
    return out


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}``, matching nested braces."""
    found = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:i])
                    break
    return found


def _clean_latex(text: str) -> str:
    text = _FRAC_RE.sub(r"\1/\2", text)
    text = re.sub(r"\\(?:text|mathrm|mbox)\s*\{[^{}]*\}", " ", text)
    text = text.replace("\\$", "$").replace("\\%", "%").replace("\\!", "").replace("{,}", ",")
    return text.replace("\\,", "").replace("{", "").replace("}", "")


def extract_answer(text: str) -> str | None:
    """The final numeric answer in a model completion (or a GSM8K gold string), or None.

    Returns a normalised number string: no ``$``, commas or spaces; ``a/b`` kept as a fraction
    (``parse_number`` turns it into a float). Example: ``"... #### $1,234.50"`` -> ``"1234.50"``.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects a str completion, got {type(text).__name__}")
    hashes = _HASH_RE.findall(text)
    for tail in reversed(hashes):
        nums = _numbers(_clean_latex(tail))
        if nums:
            return nums[0]
    for box in reversed(_boxed_contents(text)):
        nums = _numbers(_clean_latex(box))
        if nums:
            return nums[-1] if len(nums) > 1 and "=" in box else nums[0]
    for tail in reversed(_ANSWER_RE.findall(text)):
        nums = _numbers(_clean_latex(tail))
        if nums:
            return nums[0]
    nums = _numbers(_clean_latex(text))
    return nums[-1] if nums else None


def parse_number(token: str) -> float | None:
    """Float value of a normalised number token (``"-3.5"``, ``"3/4"``); None if unparsable."""
    token = token.replace(",", "").replace("$", "").replace(" ", "").rstrip("%")
    try:
        if "/" in token:
            num, den = token.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(token)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def numbers_match(pred: str | None, gold: str, *, rel_tol: float = REL_TOL) -> bool:
    """True iff both parse and |pred - gold| <= max(rel_tol * |gold|, 1e-9)."""
    if pred is None:
        return False
    p, g = parse_number(pred), parse_number(gold)
    if p is None or g is None:
        return False
    return abs(p - g) <= max(rel_tol * abs(g), ABS_TOL)


def normalise_gold(gold: str) -> str:
    """The gold answer as a number token: accepts ``"1,234"``, ``"$5"`` or a full GSM8K solution."""
    if not isinstance(gold, str):
        gold = str(gold)
    ans = extract_answer(gold) if "####" in gold else (_numbers(gold) or [None])[0]
    if ans is None or parse_number(ans) is None:
        raise ValueError(
            f"gold answer {gold[-80:]!r} has no number: pass the text after '####' "
            "(e.g. '72') or the full GSM8K answer field"
        )
    return ans


def gsm8k_reward(completion: str, gold: str) -> float:
    """1.0 if the completion's extracted answer equals ``gold`` within rel 1e-4, else 0.0."""
    return 1.0 if numbers_match(extract_answer(completion), normalise_gold(gold)) else 0.0
