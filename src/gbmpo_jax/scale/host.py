"""Host-process facts that decide CPU speed: which memory allocator the process runs with.

XLA:CPU allocates the temporaries of a compiled program on every call. glibc's malloc serves
blocks of this size with fresh mmaps and returns them to the kernel on free, so every step
page-faults (and zero-fills) its working set again: measured on the "3M" benchmark update,
~800k page faults per 20 forward + backward calls, and the update runs 1.5x faster (0.40 s ->
0.26 s) with tcmalloc, which keeps freed memory for reuse (BENCHMARKS.md). Cloud TPU VM
images preload tcmalloc for the same reason. A library cannot swap the allocator of a
running process, so the Makefile and the launch scripts preload it (``LD_PRELOAD``); this
module only tells which one is in use, for the start-up log and the benchmark record.
"""

from __future__ import annotations

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
