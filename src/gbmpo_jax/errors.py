"""User-facing failures: one sentence naming the file or config key and the fix.

A bad input (a malformed data file, a corrupt model, a mirror map that is not an .npz, a
workdir in use) must end the CLI with one line and exit code 2, not a traceback. The pieces:

  * `InputError`: raised with that sentence;
  * `phase(what)`: a context manager that turns the low-level exceptions a loader raises
    (OSError, ValueError, KeyError, zip / JSON errors, a plain RuntimeError such as the hub
    being unreachable) into an InputError prefixed with `what`
    (e.g. "model.path='x.gguf'"), keeping the original as its cause;
  * `report(err, debug=..., log_file=...)`: the CLI's one line on stderr; the traceback goes to
    `log_file` (the run's `error.log`) or, with `--debug`, to stderr as well.

Exceptions that already name their key (ConfigError and the checkpoint / mesh / lock errors)
pass through `phase` unchanged. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
import traceback
import zipfile


class InputError(RuntimeError):
    """A bad input, named with its file or config key and the fix."""


_LOW_LEVEL = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError)


def _first_line(e: BaseException) -> str:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    line = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
    return f"{type(e).__name__}: {line}" if type(e).__name__ not in line else line


@contextlib.contextmanager
def phase(what: str, fix: str = ""):
    """Re-raises a loader's low-level exception as `InputError("{what}: {message}; {fix}")`."""
    from gbmpo_jax.config import ConfigError

    try:
        yield
    except (ConfigError, InputError):
        raise
    except (*_LOW_LEVEL, RuntimeError) as e:
        if isinstance(e, RuntimeError) and type(e) is not RuntimeError:
            raise  # a subclass (JAX, our checkpoint / lock errors) is not a loader's message
        msg = f"{what}: {_first_line(e)}"
        raise InputError(f"{msg}; {fix}" if fix else msg) from e


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types the CLIs report as one line with exit code 2."""
    from gbmpo_jax.config import ConfigError
    from gbmpo_jax.scale.mesh import MeshError
    from gbmpo_jax.workdir import checkpoint, lock

    return (
        InputError,
        ConfigError,
        checkpoint.CheckpointMismatchError,
        checkpoint.CheckpointError,
        lock.WorkdirLockedError,
        MeshError,
    )


def report(err: BaseException, *, debug: bool = False, log_file=None, stream=None) -> int:
    """Prints `error: <sentence>` (and where the traceback went); returns exit code 2."""
    stream = stream or sys.stderr
    tb = "".join(traceback.format_exception(err))
    where = ""
    if log_file is not None:
        try:
            log_file = pathlib.Path(log_file)
            if log_file.parent.is_dir():
                with open(log_file, "a") as f:
                    f.write(tb + "\n")
                where = f" (traceback in {log_file})"
        except OSError:
            pass
    if debug:
        stream.write(tb)
    elif not where:
        where = " (rerun with --debug for the traceback)"
    stream.write(f"error: {err}{where}\n")
    stream.flush()
    return 2
