"""Host-process memory: which allocator the process runs with, and handing compile garbage back.

XLA:CPU allocates the temporaries of a compiled program on every call. glibc's malloc serves
blocks of this size with fresh mmaps and returns them to the kernel on free, so every step
page-faults (and zero-fills) its working set again: measured on the "3M" benchmark update,
~800k page faults per 20 forward + backward calls, and the update runs 1.5x faster (0.40 s ->
0.26 s) with tcmalloc, which keeps freed memory for reuse (BENCHMARKS.md). Cloud TPU VM
images preload tcmalloc for the same reason. A library cannot swap the allocator of a
running process, so the Makefile and the launch scripts preload it (``LD_PRELOAD``); this
module only tells which one is in use, for the start-up log and the benchmark record.

Compile garbage (`release_around_compiles`): compiling a large program (the update, the
rollout) leaves XLA:CPU's and LLVM's freed working memory in the allocator's free lists:
~350 MB per program on the "23.6M" benchmark update, measured with glibc (RSS 622 MB before
the compile, 1,109 MB after, 755 MB after ``malloc_trim``). The allocator keeps those pages,
and the program's temporaries then come on top of them: XLA:CPU allocates them as one block
(2.1 GB for that update), which no fragment of the free lists can serve. Tracing and lowering
leave theirs too, under which the compiler's working set then comes. Listeners on JAX's
lowering and backend-compile events hand the free pages back before and after each large
compile (tcmalloc: ``MallocExtension_ReleaseFreeMemory``; glibc: ``malloc_trim``). "3M" bench
worker peak RSS: 948 MB -> 777 MB with the release after compiles; adding the one before
compiles measured 732 -> 600 MB in a probe, while the full benchmark's cold worker stayed at
~800 MB (BENCHMARKS.md; TRL 735-747 MB).
"""

from __future__ import annotations

import ctypes
import os
import pathlib

# (name, substring of the shared object's path)
KNOWN = (("tcmalloc", "libtcmalloc"), ("jemalloc", "libjemalloc"), ("mimalloc", "libmimalloc"))
INSTALL_HINT = "sudo apt-get install libtcmalloc-minimal4 (the Makefile preloads it)"


def allocator(maps: str | None = None) -> str:
    """ "tcmalloc" | "jemalloc" | "mimalloc" when one is mapped into this process, else "libc".

    ``maps``: the text of /proc/self/maps (read when None; other systems: LD_PRELOAD)."""
    if maps is None:
        p = pathlib.Path("/proc/self/maps")
        maps = p.read_text() if p.exists() else os.environ.get("LD_PRELOAD", "")
    for name, needle in KNOWN:
        if needle in maps:
            return name
    return "libc"


def allocator_note(backend: str, maps: str | None = None) -> str | None:
    """A one-line hint when XLA runs on the CPU under the C library's malloc, else None."""
    if backend != "cpu" or allocator(maps) != "libc":
        return None
    return (
        "note: XLA:CPU under glibc malloc re-faults its temporaries every step (updates ~1.5x "
        f"slower); preload tcmalloc: {INSTALL_HINT}"
    )


# JAX records these events with their durations: lowering to an MLIR module ends right before
# the backend compile; the backend compile's own event comes after it
LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_RELEASE_LISTENERS: dict[tuple[float, float], object] = {}  # thresholds -> listener


def release_free_memory() -> bool:
    """Returns the allocator's free pages to the kernel; False where this allocator offers
    no such call (jemalloc, mimalloc, non-glibc C libraries)."""
    name, lib = allocator(), ctypes.CDLL(None)  # the process's global symbols (LD_PRELOAD too)
    fn = {"tcmalloc": "MallocExtension_ReleaseFreeMemory", "libc": "malloc_trim"}.get(name)
    if fn is None or not hasattr(lib, fn):
        return False
    getattr(lib, fn)(*((0,) if name == "libc" else ()))
    return True


def release_around_compiles(min_seconds: float = 0.5, min_lower_seconds: float = 0.05) -> None:
    """Calls `release_free_memory` before every backend compile whose lowering took at least
    ``min_lower_seconds`` (a large program: tracing and lowering left their garbage, and the
    compiler's working set is about to come on top) and after every compile that took at
    least ``min_seconds`` (its own garbage, before the program's temporaries). Small programs
    are skipped: a release costs ~1-50 ms. Idempotent per pair of thresholds."""
    if (min_seconds, min_lower_seconds) in _RELEASE_LISTENERS:
        return
    import jax

    def listener(event: str, duration: float, **_) -> None:
        if (event == BACKEND_COMPILE_EVENT and duration >= min_seconds) or (
            event == LOWERING_EVENT and duration >= min_lower_seconds
        ):
            release_free_memory()

    jax.monitoring.register_event_duration_secs_listener(listener)
    _RELEASE_LISTENERS[(min_seconds, min_lower_seconds)] = listener
