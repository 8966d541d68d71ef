"""The host allocator check (scale/host.py) and the Makefile preloading tcmalloc."""

import os
import subprocess
import sys

import pytest

from gbmpo_jax.scale import host

TC = "7f00-7f10 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n"
LIBC = "7f00-7f10 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"


def test_allocator_is_read_from_the_process_maps():
    assert host.allocator(LIBC + TC) == "tcmalloc"
    assert host.allocator(LIBC) == "libc"
    assert host.allocator("/usr/lib/libjemalloc.so.2") == "jemalloc"


def test_note_only_for_xla_cpu_under_libc():
    assert host.allocator_note("gpu", LIBC) is None
    assert host.allocator_note("cpu", TC) is None
    note = host.allocator_note("cpu", LIBC)
    assert "tcmalloc" in note and "libtcmalloc-minimal4" in note


def test_this_process_reports_what_it_runs_with():
    """Under `make test` tcmalloc is preloaded when installed: the check sees it; a child
    started without LD_PRELOAD sees the C library's malloc."""
    preloaded = "libtcmalloc" in os.environ.get("LD_PRELOAD", "")
    assert (host.allocator() == "tcmalloc") == preloaded
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    code = "from gbmpo_jax.scale import host; print(host.allocator())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "libc"


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux only")
def test_makefile_preloads_tcmalloc_when_installed():
    lib = subprocess.run(["bash", "-c", "ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4"],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    if not lib:
        pytest.skip("libtcmalloc-minimal4 not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    recipe = subprocess.run(["make", "-s", "-n", "train", "EXP=default"], cwd=root,
                            capture_output=True, text=True).stdout  # fmt: skip
    assert "LD_PRELOAD" in recipe and "libtcmalloc_minimal" in recipe
    off = subprocess.run(["make", "-s", "-n", "train", "EXP=default", "TCMALLOC="], cwd=root,
                         capture_output=True, text=True).stdout  # fmt: skip
    assert "LD_PRELOAD" not in off


def test_compiles_hand_their_free_memory_back():
    """`release_around_compiles` runs the release before and after each backend compile
    (once each, however often it is installed), and the release finds its call under this
    allocator."""
    code = (
        "import jax, jax.numpy as jnp\n"
        "from gbmpo_jax.scale import host\n"
        "calls = []\n"
        "orig = host.release_free_memory\n"
        "host.release_free_memory = lambda: calls.append(1) or orig()\n"
        "x = jnp.ones(3)\n"
        "host.release_around_compiles(min_seconds=0.0, min_lower_seconds=0.0)\n"
        "host.release_around_compiles(min_seconds=0.0, min_lower_seconds=0.0)\n"
        "jax.jit(lambda v: jnp.sin(v) * 2)(x).block_until_ready()\n"
        "one = len(calls)\n"
        "jax.jit(lambda v: jnp.cos(v) * 3)(x).block_until_ready()\n"
        "print(one, len(calls), orig())\n"
    )
    for preload in (None, os.environ.get("LD_PRELOAD")):
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        if preload:
            env["LD_PRELOAD"] = preload
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True)  # fmt: skip
        assert out.returncode == 0, out.stderr
        one, two, found = out.stdout.split()
        assert int(one) == 2 and int(two) == 4, out.stdout  # before and after each compile
        assert found == "True"  # glibc's malloc_trim / tcmalloc's ReleaseFreeMemory
