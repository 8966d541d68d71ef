"""The code sandbox: correct verdicts, and attacks that must yield no pass and leave no trace.

Every attack program is written so that it *would* pass both asserts if the attack worked
(it defines a correct ``f`` after the attack, or forges the pass signal). Each must return
within timeout + 2 s, leave no process behind and change nothing on the host.
"""

import os
import pathlib
import shutil
import socket
import tempfile
import time

import pytest

from gbmpo_jax.tasks.rewards import sandbox
from gbmpo_jax.tasks.rewards.sandbox import CodeJob, Limits, run_many, run_tests

pytestmark = pytest.mark.skipif(sandbox.bwrap_path() is None, reason="bubblewrap not installed")

TESTS = ["assert f(1) == 2", "assert f(2) == 3"]
GOOD = "def f(x):\n    return x + 1\n"
TIMEOUT = 2.0


def _sandbox_pids() -> list[int]:
    """Processes that run as a sandbox uid, or bwrap processes started by this test process."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = pathlib.Path(f"/proc/{name}/status").read_text()
            cmd = pathlib.Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        fields = dict(ln.split(":", 1) for ln in status.splitlines() if ":" in ln)
        uid = int(fields["Uid"].split()[0])
        ppid = int(fields["PPid"].split()[0])
        state = fields["State"].split()[0]
        if state == "Z":
            continue
        if sandbox._UID_BASE <= uid < sandbox._UID_BASE + sandbox._UID_SPAN:
            pids.append(int(name))
        elif cmd.startswith(b"bwrap") or (ppid == os.getpid() and b"bwrap" in cmd):
            pids.append(int(name))
    return pids


@pytest.fixture
def probe():
    """A host directory visible (read-only) inside the sandbox, with a victim file."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="gbmpo_probe_", dir="/var/tmp"))
    d.chmod(0o777)
    (d / "victim.txt").write_text("keep me")
    (d / "victim.txt").chmod(0o666)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_verdicts_and_output_capture():
    res = run_tests(
        "def f(x):\n    print('seen', x)\n    return x + (x != 2)\n",
        ["assert f(1) == 2", "assert f(2) == 3", "assert f(3) == 4"],
    )
    assert (res.passed, res.total, res.status) == (2, 3, "failed")
    assert res.outcomes == ("passed", "failed", "passed")
    assert "AssertionError" in res.details[1]
    assert "seen 1" in res.stdout and "seen 2" in res.stdout
    ok = run_tests(GOOD, TESTS)
    assert (ok.passed, ok.status, ok.all_passed, ok.fraction) == (2, "ok", True, 1.0)


def test_setup_code_and_imports_run_before_tests():
    res = run_tests(
        "def area(r):\n    return math.pi * r * r\n",
        ["assert math.isclose(area(R), math.pi * 4)"],
        setup_code="R = 2",
        imports=["import math"],
    )
    assert res.status == "ok", res


def test_syntax_error_status():
    res = run_tests("def f(x) return x", TESTS)
    assert (res.passed, res.status) == (0, "syntax_error")
    assert "SyntaxError" in res.stderr


def test_bad_tests_are_rejected_with_the_field_named():
    with pytest.raises(ValueError, match=r"tests\[0\] does not compile"):
        run_tests(GOOD, ["assert f(1) =="])
    with pytest.raises(ValueError, match="tests is empty"):
        run_tests(GOOD, [])
    with pytest.raises(TypeError, match="list of assert"):
        run_tests(GOOD, "assert f(1) == 2")


def test_missing_bwrap_error_names_the_install(monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    with pytest.raises(sandbox.SandboxUnavailableError, match="apt-get install bubblewrap"):
        run_tests(GOOD, TESTS)
    with pytest.raises(sandbox.SandboxUnavailableError, match="unsafe_rlimits_only"):
        run_many([CodeJob(GOOD, TESTS)])


def test_unsafe_mode_still_scores():
    res = run_tests(GOOD, TESTS, sandbox="unsafe_rlimits_only")
    assert res.status == "ok"
    bad = run_tests("def f(x):\n    return 0\n", TESTS, sandbox="unsafe_rlimits_only")
    assert (bad.passed, bad.status) == (0, "failed")


def test_sandbox_is_isolated_from_host_view():
    prog = (
        "import os, socket\n"
        "def f(x):\n"
        "    return x + 1\n"
        "assert os.getuid() != 0\n"
        "assert os.getpid() < 100\n"  # own pid namespace
        "assert [n for _, n in socket.if_nameindex()] == ['lo']\n"
        "assert not os.path.exists('/root/.ssh')\n"
    )
    assert run_tests(prog, TESTS).status == "ok"


ATTACKS = {
    "loop_in_function": "def f(x):\n    while True:\n        pass\n",
    "loop_at_module_level": "while True:\n    pass\n" + GOOD,
    "fork_bomb": (
        "import os\n" + GOOD + "while True:\n    try:\n        os.fork()\n    except OSError:\n"
        "        pass\n"
    ),
    "memory_bomb_one_shot": "x = bytearray(8 << 30)\n" + GOOD,
    "memory_bomb_growing": "a = []\nwhile True:\n    a.append(bytearray(1 << 24))\n" + GOOD,
    "write_host_dir": "open('{probe}/new.txt', 'w').write('x')\n" + GOOD,
    "write_repo": "open('{repo}/sandbox_owned.txt', 'w').write('x')\n" + GOOD,
    "overwrite_victim": "open('{probe}/victim.txt', 'w').write('gone')\n" + GOOD,
    "delete_files": (
        "import os, shutil\ntry:\n    os.remove('{probe}/victim.txt')\nexcept OSError:\n    pass\n"
        "shutil.rmtree('{probe}')\n" + GOOD
    ),
    "loopback_socket": (
        "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "s.sendall(b'escaped')\n" + GOOD
    ),
    "kill_parent": GOOD + "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "kill_everything": GOOD + "import os\nos.kill(-1, 9)\n",
    "stop_parent": GOOD + "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\n",
    "sys_exit_before_asserts": "import sys\ndef f(x):\n    return 0\nsys.exit(0)\n",
    "os_exit_before_asserts": "import os\ndef f(x):\n    return 0\nos._exit(0)\n",
    "fake_pass_output": (
        "import json, os, sys\ndef f(x):\n    return 0\n"
        "print('PASS\\n2/2 tests passed\\nOK')\nprint('PASS', file=sys.stderr)\n"
        "msg = ''.join(json.dumps(dict(event='test', index=i, outcome='passed', detail='')) + "
        "'\\n' for i in range(2)) + json.dumps(dict(event='done', stdout='', stderr='')) + '\\n'\n"
        "for fd in range(3, 256):\n    try:\n        os.write(fd, msg.encode() + os.urandom(16))\n"
        "    except OSError:\n        pass\n"
        "for fd in range(3, 64):\n    try:\n"
        "        open(f'/proc/{{os.getppid()}}/fd/{{fd}}', 'w').write(msg)\n"
        "    except OSError:\n        pass\n"
    ),
    "orphaned_background": (
        "import os, subprocess, time\n"
        "subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(300)\n"
        "    os._exit(0)\n"
        "def f(x):\n    return 0\n"
    ),
    "ignore_signals": (
        "import signal\nfor s in (signal.SIGTERM, signal.SIGALRM, signal.SIGINT, signal.SIGHUP,\n"
        "          signal.SIGXCPU, signal.SIGXFSZ):\n    signal.signal(s, signal.SIG_IGN)\n"
        "def f(x):\n    while True:\n        pass\n"
    ),
    "stdout_flood": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n" + GOOD,
    "stderr_flood": "import os\nwhile True:\n    os.write(2, b'y' * 65536)\n" + GOOD,
    "file_flood": (
        "i = 0\nwhile True:\n    open(f'junk{{i}}', 'wb').write(b'z' * (1 << 20))\n    i += 1\n"
        + GOOD
    ),
    "deep_recursion": (
        "import sys\nsys.setrecursionlimit(10 ** 8)\ndef r(n):\n    return r(n + 1)\nr(0)\n" + GOOD
    ),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_yields_no_pass_and_no_trace(name, probe):
    repo = pathlib.Path(__file__).resolve().parents[1]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    program = ATTACKS[name].format(probe=probe, repo=repo, port=listener.getsockname()[1])
    before = set(_sandbox_pids())
    t0 = time.monotonic()
    res = run_tests(program, TESTS, timeout_s=TIMEOUT)
    elapsed = time.monotonic() - t0
    try:
        conn, _ = listener.accept()
        conn.close()
        got_connection = True
    except BlockingIOError:
        got_connection = False
    listener.close()
    assert res.passed == 0, res
    assert res.status != "ok"
    assert elapsed <= TIMEOUT + 2.0, (elapsed, res)
    assert not got_connection
    assert (probe / "victim.txt").read_text() == "keep me"
    assert sorted(p.name for p in probe.iterdir()) == ["victim.txt"]
    assert not (repo / "sandbox_owned.txt").exists()
    assert (
        len(res.stdout) <= Limits().output_cap + 32 and len(res.stderr) <= Limits().output_cap + 32
    )
    leftover = set(_sandbox_pids()) - before
    assert not leftover, f"processes left behind: {leftover}"


def test_attacks_do_not_disturb_concurrent_honest_programs():
    jobs = [CodeJob(GOOD, TESTS, timeout_s=TIMEOUT) for _ in range(6)]
    jobs[1] = CodeJob(ATTACKS["fork_bomb"], TESTS, timeout_s=TIMEOUT)
    jobs[3] = CodeJob(ATTACKS["kill_everything"], TESTS, timeout_s=TIMEOUT)
    res = run_many(jobs, max_workers=6)
    assert [r.passed for r in res] == [2, 0, 2, 0, 2, 2]
    assert not _sandbox_pids()


def test_a_sandbox_that_cannot_start_fails_loudly(monkeypatch, tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: str(fake))
    with pytest.raises(sandbox.SandboxUnavailableError, match="No permissions"):
        run_tests(GOOD, TESTS)
    assert str(fake) not in sandbox._PROBED
