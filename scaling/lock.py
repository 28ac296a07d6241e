"""The run lock: at most one process trains a run at a time (see RunLock), and one that lost its lock stops."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Self

from scaling import runs
from scaling.runs import HOST, LOCK

log = logging.getLogger("scaling.lock")


class LockLost(RuntimeError):
    """This process's lock on a run was taken over: it must write nothing more to the run."""


class RunLock:
    """At most one process trains a run, on one host or across Slurm / Ray workers that share a filesystem.

    The lock is a file created exclusively in the run folder, naming its owner (host, pid, the process's start
    time) and a token of its own; the owner refreshes its modification time every HEARTBEAT_S seconds from a thread.
    Another process waits while the owner lives. An owner on this host lives while its process does, however late
    its heartbeat (a process stopped with SIGSTOP or Ctrl-Z keeps its lock); an owner on another host is presumed
    dead when its heartbeat is older than STALE_S. A dead owner's lock is taken over with a warning. Before every
    write to the run the owner checks that the lock still holds its token (check()): one whose lock was taken
    over (it was paused past STALE_S on another host, or its lock was removed) raises LockLost and leaves the run
    to its new owner."""

    HEARTBEAT_S, STALE_S, POLL_S = 10.0, 60.0, 1.0

    def __init__(self, folder: Path):
        self.path, self._ino, self._stop = Path(folder) / LOCK, None, threading.Event()
        self.token = uuid.uuid4().hex

    def __enter__(self) -> Self:
        if not runs.PRIMARY:  # the first process of a multi-process run holds it for all of them
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        waited = False
        while not self._create():
            owner, age, ino = self._inspect()
            if ino is None:
                continue  # released between our attempts
            if self._dead(owner, age):
                log.warning("run %s: taking over the lock of %s (%s)", self.path.parent.name, _who(owner),
                            "process gone" if age < self.STALE_S else f"no heartbeat for {age:.0f} s")
                self._bury(ino)
                continue
            if not waited:
                log.info("run %s is being trained by %s; waiting for it", self.path.parent.name, _who(owner))
                waited = True
            time.sleep(self.POLL_S)
        threading.Thread(target=self._beat, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._ino is None:
            return
        try:
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def check(self) -> None:
        """Raise LockLost unless this process still holds the lock (it may write to the run)."""
        if self._ino is None:  # not holding one (a process of a multi-process run that writes nothing)
            return
        owner, _, ino = self._inspect()
        if ino != self._ino or owner.get("token") not in (None, self.token):
            raise LockLost(f"run {self.path.parent.name}: its lock was taken over by {_who(owner)} while this "
                           f"process ({_who({'host': HOST, 'pid': os.getpid()})}) trained it; this process stops "
                           f"and writes nothing more to it")

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"host": HOST, "pid": os.getpid(), "start": _start_time(os.getpid()), "since": time.time(),
                       "token": self.token}, f)
        self._ino = os.stat(self.path).st_ino
        return True

    def _inspect(self) -> tuple[dict, float, int | None]:
        """(owner, seconds since its last heartbeat, inode), or inode None if the lock is gone."""
        try:
            st = os.stat(self.path)
            owner = json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return {}, 0.0, None
        except ValueError:  # being written right now
            owner = {}
        return owner, time.time() - st.st_mtime, st.st_ino

    def _dead(self, owner: dict, age: float) -> bool:
        """An owner on this host is dead when its process is gone (or its pid now names another process); one on
        another host when its heartbeat is older than STALE_S."""
        if owner.get("host") != HOST or not isinstance(owner.get("pid"), int):
            return age > self.STALE_S
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
        started = _start_time(owner["pid"])
        return owner.get("start") is not None and started is not None and started != owner["start"]

    def _bury(self, ino: int) -> None:
        """Remove the stale lock with this inode, and only it (another process may have replaced it already)."""
        grave = self.path.with_name(f"{LOCK}.stale.{HOST}.{os.getpid()}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        if os.stat(grave).st_ino != ino:  # a fresh lock: put it back
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
        os.unlink(grave)

    def _beat(self) -> None:
        """Refresh the lock's modification time, only while it is still ours (never another owner's lock)."""
        while not self._stop.wait(self.HEARTBEAT_S):
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return  # lost: the training loop's next check() says so, once
            try:
                if os.fstat(fd).st_ino != self._ino:
                    return
                os.utime(fd)
            finally:
                os.close(fd)


def _who(owner: dict) -> str:
    return f"{owner.get('host', '?')}:{owner.get('pid', '?')}"


def _start_time(pid: int) -> int | None:
    """When a process started, in clock ticks since boot (Linux), which tells a live owner from a later process
    that reuses its pid; None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
