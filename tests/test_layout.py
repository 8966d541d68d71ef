"""The package tree shows the layers: no module imports from a layer above its own."""

import ast
import pathlib

import gbmpo_jax

ROOT = pathlib.Path(gbmpo_jax.__file__).parent
# bottom to top; the shell (the CLIs, config, policy, sft, errors) and what a run writes in
# its workdir (checkpoints guard the config) sit above every layer of the core
RANK = {"models": 0, "sampler": 1, "scale": 2, "tasks": 3, "rl": 4, "es": 5, "workdir": 6}
TOP = 6
LEAVES = {"seeds"}  # importable from anywhere: it imports nothing of ours


def _layer(dotted: str) -> tuple[str, int]:
    parts = dotted.split(".")
    name = parts[1] if len(parts) > 1 else ""
    if name in LEAVES:
        return name, -1
    return name, RANK.get(name, TOP)


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # function-level (lazy) imports count too
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gbmpo_jax"):
            if node.module == "gbmpo_jax":
                yield from (f"gbmpo_jax.{a.name}" for a in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("gbmpo_jax"))


def test_no_module_imports_a_layer_above_its_own():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        me = ".".join(rel.parts)
        _, my_rank = _layer(me)
        for target in _imports(path):
            name, rank = _layer(target)
            if rank > my_rank:
                bad.append(f"{me} imports {target} ({name}: layer {rank} > {my_rank})")
    assert not bad, "\n".join(bad)


def test_every_layer_is_a_package_and_the_leaves_import_nothing_of_ours():
    for name in RANK:
        assert (ROOT / name / "__init__.py").is_file(), name
        assert (ROOT / name / "__init__.py").read_text().startswith('"""'), name
    for leaf in LEAVES:
        assert not list(_imports(ROOT / f"{leaf}.py")), leaf
    flat = sorted(p.stem for p in ROOT.glob("*.py") if p.stem != "__init__")
    assert len(flat) <= 12, flat  # the shell and the config; the layers live in packages
