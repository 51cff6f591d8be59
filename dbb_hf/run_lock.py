"""One run at a time in a run folder: a lock on ``output_dir`` that names its holder.

Two runs writing into one folder would replace and delete each other's stage folders
(the second one used to crash on a ``state.json`` the first had just moved away). A run
takes ``output_dir/.dbb_hf.lock`` with ``filelock`` (``fcntl.flock`` on Unix, an OS lock):
the OS drops it when the process ends however it ends (SIGKILL, out of memory), so a lock
left behind by a dead process never blocks the next run. ``.dbb_hf.lock.json`` beside it
names the holder (pid, host, start time, command) for the message of a run that finds
the folder taken. Under ``accelerate launch`` the main process takes the lock for every
rank of its launch and tells the others whether it got it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from .stages import write_text_atomic

LOCK_NAME = ".dbb_hf.lock"
HOLDER_NAME = ".dbb_hf.lock.json"


class RunFolderLockedError(RuntimeError):
    """Another run holds the run folder."""


def _holder() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]]),
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _refusal(out: Path) -> str:
    try:
        holder = json.loads((out / HOLDER_NAME).read_text())
    except (OSError, ValueError):
        holder = None
    what = "another dbb_hf run"
    if holder:
        what += f" (pid {holder['pid']} on {holder['host']}, started {holder['started']}: {holder['command']})"
        if holder["host"] == socket.gethostname() and not _alive(int(holder["pid"])):
            what += "; that process has ended, but a process it started still holds the lock"
    return (f"the run folder {out} is in use by {what}. Wait until it ends, or give this run another "
            f"--output_dir; two runs in one folder would overwrite each other's stages")


@contextmanager
def run_folder_lock(output_dir: str | os.PathLike, state) -> Iterator[None]:
    """Hold the run folder's lock for the body, for all processes of ``state`` (a PartialState)."""
    out = Path(output_dir)
    lock, refusal = None, None
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(out / LOCK_NAME), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            lock, refusal = None, _refusal(out)
        else:
            write_text_atomic(out / HOLDER_NAME, json.dumps(_holder()))
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
    if refusal is not None:
        raise RunFolderLockedError(refusal)
    try:
        yield
    finally:
        if lock is not None:
            (out / HOLDER_NAME).unlink(missing_ok=True)
            lock.release()
