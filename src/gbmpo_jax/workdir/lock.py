"""One writer per run directory: a lock file that names its holder.

Two processes training into one workdir interleave `metrics.jsonl`, write one TensorBoard file
together and race on the checkpoint directory. `RunLock` makes the second one stop at once with
a sentence that names the holder (pid, host, start time) and the fix.

Mechanism: `workdir/.lock` holds the holder's pid, host and start time, and the holder keeps
an exclusive `flock` on it. The kernel drops the flock when the process dies (even SIGKILL), so
a stale file is taken over; the pid is checked as well, because some network filesystems
accept every flock. The file is removed on release. Only process 0 of a multi-host run locks.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import socket

LOCK_NAME = ".lock"


class WorkdirLockedError(RuntimeError):
    """Another live process holds the run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _holder(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


class RunLock:
    """Exclusive lock on a run directory; `acquire` raises WorkdirLockedError if held."""

    def __init__(self, workdir):
        self.path = pathlib.Path(workdir) / LOCK_NAME
        self._fd: int | None = None
        self.stale: dict | None = None  # the dead holder's record, when one was taken over

    def _refuse(self, info: dict):
        who = f"process {info.get('pid', '?')} on {info.get('host', '?')}"
        since = f" (started {info['started']})" if info.get("started") else ""
        raise WorkdirLockedError(
            f"{self.path.parent} is in use by {who}{since}: one run directory takes one "
            f"writer. Wait for it to finish or stop it, or pass another --workdir (if that "
            f"process is gone, delete {self.path})"
        )

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._refuse(_holder(self.path))
            try:  # the holder may have removed the file between our open and flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = _holder(self.path)
            pid = info.get("pid")
            if pid and pid != os.getpid():
                if info.get("host") == host and _alive(pid):
                    os.close(fd)  # a live holder whose flock this filesystem did not honour
                    self._refuse(info)
                self.stale = info
            me = {"pid": os.getpid(), "host": host,
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            os.fsync(fd)
            self._fd = fd
            return self
        raise WorkdirLockedError(f"{self.path}: could not take the lock (it kept changing)")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
