"""Synthetic arithmetic problems generated in code (the CPU demos' task; `data` wraps them).

A problem is an expression of ``operands`` numbers joined by operations from ``operations``
(``+-*``); every number has ``digits`` digits except the last, which has ``last_digits``
(0 = ``digits``): digits=2, last_digits=1 gives "37 + 8" (1,800 distinct problems with
``+-``). A problem's split is fixed by a hash of its text (test 10%, validation 10%, train
80%), so the splits never share a question for any size or seed; ``seed`` orders the problems
within a split. ``size`` 0 = 2,000 train / 200 other problems, or every distinct problem of
the split when fewer exist.

``teacher_error`` (two-operand ``+-`` only) makes the *demonstration* imperfect the way a
student is: in that fraction of the problems that need a carry or borrow (chosen by a hash of
the problem, so fixed), ``shown`` drops it (37 + 8 -> 35, 37 - 8 -> 39) while ``value``, which
the reward checks, stays exact. A warm-up on these demonstrations learns the error, and RL on
the exact-answer reward has to unlearn it (the CPU demo, experiments/default.py).
"""

from __future__ import annotations

import hashlib
import random
from typing import NamedTuple

DEFAULTS = {
    "digits": 2,
    "operands": 2,
    "operations": "+-",
    "size": 0,
    "seed": 0,
    "last_digits": 0,
    "teacher_error": 0.0,
}


class Problem(NamedTuple):
    expr: str  # "37 + 8"
    value: int  # the exact result (the reward's gold)
    shown: int  # the demonstration's result (= value unless the teacher erred)


def hash_unit(text: str) -> float:
    """A fixed pseudo-random number in [0, 1) from text (independent of Python's hash seed)."""
    return int(hashlib.blake2b(text.encode(), digest_size=8).hexdigest(), 16) / 2.0**64


def without_carry(a: int, b: int, op: str) -> int:
    """a op b computed digit by digit, forgetting every carry / borrow (a >= 0, b >= 0).

    The classic student error: 37 + 8 -> 35, 37 - 8 -> 39. Equals a op b when no column
    carries or borrows. Each column's digit is taken mod 10 (so for a < b the sign is
    lost too: 3 - 8 -> 5).
    """
    out, place = 0, 1
    while a or b:
        x, y = a % 10, b % 10
        out += ((x + y) % 10 if op == "+" else (x - y) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def problems(split: str, opts: dict) -> list[Problem]:
    """The problems of ``split`` (train / validation / test) under ``opts`` (see DEFAULTS)."""
    digits, n_ops, ops = opts["digits"], opts["operands"], opts["operations"]
    if digits < 1 or n_ops < 2 or not ops or set(ops) - set("+-*"):
        raise ValueError(
            "arithmetic options: digits >= 1, operands >= 2, operations a subset of '+-*' "
            f"(got digits={digits}, operands={n_ops}, operations={ops!r})"
        )
    size = opts["size"] if opts["size"] > 0 else (2000 if split == "train" else 200)
    tag = "" if opts["last_digits"] in (0, digits) else f"/{opts['last_digits']}"
    rng = random.Random(f"{opts['seed']}/{digits}/{n_ops}/{ops}{tag}")
    last = opts["last_digits"] or digits
    if last < 1:
        raise ValueError(f"arithmetic option last_digits={last}: use 0 (= digits) or >= 1")
    err = float(opts["teacher_error"])
    if not 0.0 <= err <= 1.0 or (err and (n_ops != 2 or "*" in ops)):
        raise ValueError(
            f"arithmetic option teacher_error={err}: use a fraction in [0, 1], and only with "
            "operands=2 and operations from '+-'"
        )

    def bounds(d: int) -> tuple[int, int]:
        return (0 if d == 1 else 10 ** (d - 1)), 10**d - 1

    seen, out = set(), []
    for _ in range(200 * size):
        nums = [rng.randint(*bounds(digits)) for _ in range(n_ops - 1)]
        nums.append(rng.randint(*bounds(last)))
        expr = str(nums[0]) + "".join(f" {rng.choice(ops)} {n}" for n in nums[1:])
        bucket = int(hashlib.blake2b(expr.encode(), digest_size=8).hexdigest(), 16) % 10
        home = "test" if bucket == 0 else "validation" if bucket == 1 else "train"
        if expr in seen or home != split:
            continue
        seen.add(expr)
        value = eval(expr, {"__builtins__": {}})  # digits and + - * only, built above
        shown = value
        if err and hash_unit(f"teacher/{expr}") < err:
            shown = without_carry(nums[0], nums[1], expr.split()[1])
        out.append(Problem(expr, value, shown))
        if len(out) == size:
            return out
    if opts["size"] == 0 and out:  # the default size, capped at the distinct problems found
        return out
    raise ValueError(
        f"only {len(out)} distinct {split} problems with digits={digits}, operands={n_ops}, "
        f"operations={ops!r}: lower task option size or raise digits/operands"
    )
