"""Evaluation: the pass@k estimator, the core loop and the CLI with a stub generator."""

import json
import math

import pytest

from gbmpo_jax import evaluate
from gbmpo_jax.tasks import data, evaluation
from gbmpo_jax.tasks.rewards import sandbox


def test_pass_at_k_matches_the_combinatorial_formula():
    for n, c, k in [(5, 0, 1), (5, 5, 3), (2, 1, 1), (10, 3, 5), (20, 7, 10), (4, 1, 4)]:
        expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
        assert evaluation.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert evaluation.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="k <= n"):
        evaluation.pass_at_k(3, 1, 4)


def _solve(question: str) -> int:
    return eval(question.removeprefix("Problem:\nWhat is ").rstrip("?"))


def _arith_stub(correct_fn):
    """Answers right when ``correct_fn(question, sample_index)``, else off by one."""
    calls = []

    def generate_fn(conversations, *, greedy, num_samples, max_new_tokens, key):
        calls.append(dict(n=len(conversations), greedy=greedy, num_samples=num_samples, key=key))
        out = []
        for conv in conversations:
            q = conv[-1]["content"]
            ans = _solve(q)
            out.append([f"Step by step... The answer is {ans if correct_fn(q, j) else ans + 1}."
                        for j in range(num_samples)])  # fmt: skip
        return out

    return generate_fn, calls


def test_greedy_accuracy_records_and_lengths(tmp_path):
    examples = data.load_split("arithmetic", "test", options={"size": "20"})
    right = {e.prompt[-1]["content"] for e in examples[::2]}
    gen, calls = _arith_stub(lambda q, j: q in right)
    summary = evaluation.evaluate(
        examples, "arithmetic", gen, batch_size=6, records_path=tmp_path / "r.jsonl",
        count_tokens=lambda s: len(s.split()),
    )  # fmt: skip
    assert summary["n_examples"] == 20
    assert summary["accuracy"] == summary["pass@1"] == summary["mean_reward"] == 0.5
    assert [c["n"] for c in calls] == [6, 6, 6, 2] and all(c["greedy"] for c in calls)
    recs = [json.loads(ln) for ln in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == [e.id for e in examples]
    assert recs[0]["verdicts"] == [1.0] and recs[1]["verdicts"] == [0.0]
    assert recs[0]["prompt"] == examples[0].prompt
    lens = [len(r["completions"][0]) for r in recs]
    assert summary["mean_completion_chars"] == pytest.approx(sum(lens) / 20)
    assert summary["mean_completion_tokens"] == 7.0  # "Step by step... The answer is N."


def test_sampled_pass_at_k():
    examples = data.load_split("arithmetic", "validation", options={"size": "8"})
    # example i gets exactly i % 4 correct samples out of 4
    index = {e.prompt[-1]["content"]: i for i, e in enumerate(examples)}
    gen, calls = _arith_stub(lambda q, j: j < index[q] % 4)
    import jax

    summary = evaluation.evaluate(
        examples, data.TASKS["arithmetic"], gen, greedy=False, num_samples=4, ks=(1, 2, 4),
        key=jax.random.key(0), batch_size=3,
    )  # fmt: skip
    cs = [i % 4 for i in range(8)]
    for k in (1, 2, 4):
        want = sum(evaluation.pass_at_k(4, c, k) for c in cs) / 8
        assert summary[f"pass@{k}"] == pytest.approx(want)
    assert summary["accuracy"] == pytest.approx(sum(cs) / 32)
    keys = [c["key"] for c in calls]
    assert len({str(jax.random.key_data(k)) for k in keys}) == 3  # a fresh key per batch


def test_contract_errors():
    examples = data.load_split("arithmetic", "test", options={"size": "3"})
    gen, _ = _arith_stub(lambda q, j: True)
    with pytest.raises(ValueError, match="num_samples=1"):
        evaluation.evaluate(examples, "arithmetic", gen, num_samples=2)
    with pytest.raises(ValueError, match="num_samples"):
        evaluation.evaluate(examples, "arithmetic", gen, greedy=False, num_samples=2, ks=(5,))
    bad = lambda convs, **kw: [["x"]] * (len(convs) - 1)
    with pytest.raises(ValueError, match="generate_fn must return"):
        evaluation.evaluate(examples, "arithmetic", bad)


@pytest.mark.skipif(sandbox.bwrap_path() is None, reason="bubblewrap not installed")
def test_code_task_statuses_and_partial_reward():
    examples = data.load_split("mbpp_sanitized", "prompt", source="bundled")[:4]
    refs = {e.id: e.reference for e in examples}
    ids = iter([e.id for e in examples])

    def gen(conversations, **kw):
        out = []
        for _ in conversations:
            i = next(ids)
            out.append([refs[i] if i != examples[0].id else "```python\nx = 1\n```"])
        return out

    summary = evaluation.evaluate(examples, "mbpp_sanitized", gen, reward_kwargs={"partial": True})
    assert summary["accuracy"] == 0.75
    assert summary["code_statuses"] == {"ok": 3, "failed": 1}
    assert summary["mean_reward"] == 0.75  # the failing program passes 0 of its asserts


def test_cli_with_stub_generator(tmp_path):
    args = evaluate._parser().parse_args([
        "--model", "unused", "--task", "gsm8k", "--split", "test", "--limit", "5",
        "--source", "bundled", "--out", str(tmp_path), "--no-progress",
    ])  # fmt: skip
    golds = [e.answer for e in data.load_split("gsm8k", "test", source=args.source)[:5]]
    answers = iter(golds[:3] + ["-1", "-1"])
    gen = lambda convs, **kw: [[f"#### {next(answers)}"] for _ in convs]
    summary = evaluate.run(args, generate_fn=gen)
    assert summary["accuracy"] == pytest.approx(0.6)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["accuracy"] == summary["accuracy"] and on_disk["split"] == "test"
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 5


def test_generate_text_adapter_groups_samples(monkeypatch):
    import gbmpo_jax.sampler.sampling as sampling

    seen = {}

    def fake_generate_text(model, tokenizer, conversations, **kw):
        seen.update(kw, n=len(conversations))
        return [f"{conv[-1]['content']}#{i}" for i, conv in enumerate(conversations)]

    monkeypatch.setattr(sampling, "generate_text", fake_generate_text)
    gen = evaluation.make_generate_fn(None, None, temperature=0.7, top_p=0.9)
    convs = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    out = gen(convs, greedy=False, num_samples=3, max_new_tokens=5, key="k")
    assert out == [["a#0", "a#1", "a#2"], ["b#3", "b#4", "b#5"]]
    assert seen["n"] == 6 and seen["temperature"] == 0.7 and seen["greedy"] is False
    assert seen["max_new_tokens"] == 5 and seen["key"] == "k"


@pytest.mark.slow
def test_cli_on_a_training_checkpoint(tmp_path):
    """End to end with the real sampler: a 2-step smoke run, then evaluate its checkpoint."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "gbmpo_jax.train", "--exp", "gsm8k_drgrpo:smoke",
         "--workdir", str(run_dir), "run.export=false", "mesh.num_devices=1"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    assert (run_dir / "checkpoints").is_dir() and not (run_dir / "export").exists()
    args = evaluate._parser().parse_args([
        "--model", str(run_dir), "--task", "gsm8k", "--split", "test", "--limit", "2",
        "--source", "bundled", "--out", str(tmp_path / "eval"),
        "--max-new-tokens", "6", "--batch-size", "2", "--no-progress",
    ])  # fmt: skip
    summary = evaluate.run(args)
    assert summary["n_examples"] == 2 and 0.0 <= summary["accuracy"] <= 1.0
    assert 0 < summary["mean_completion_tokens"] <= 6
    recs = (tmp_path / "eval" / "records.jsonl").read_text().splitlines()
    assert len(recs) == 2
