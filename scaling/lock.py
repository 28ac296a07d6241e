"""The run lock: at most one process trains a run at a time (see RunLock)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Self

from scaling import runs
from scaling.runs import HOST, LOCK

log = logging.getLogger("scaling.lock")


class RunLock:
    """At most one process trains a run, on one host or across Slurm / Ray workers that share a filesystem.

    The lock is a file created exclusively in the run folder, naming its owner (host, pid); the owner refreshes
    its modification time every HEARTBEAT_S seconds from a thread. Another process waits while the owner lives.
    A lock whose owner is a process that no longer exists on this host, or whose heartbeat is older than STALE_S
    (an owner on another host that died), is taken over with a warning."""

    HEARTBEAT_S, STALE_S, POLL_S = 10.0, 60.0, 1.0

    def __init__(self, folder: Path):
        self.path, self._ino, self._stop = Path(folder) / LOCK, None, threading.Event()

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

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"host": HOST, "pid": os.getpid(), "since": time.time()}, f)
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
        if age > self.STALE_S:
            return True
        if owner.get("host") != HOST or not isinstance(owner.get("pid"), int):
            return False
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
        return False

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
        while not self._stop.wait(self.HEARTBEAT_S):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                log.error("run %s: its lock file was removed while training", self.path.parent.name)
                return


def _who(owner: dict) -> str:
    return f"{owner.get('host', '?')}:{owner.get('pid', '?')}"
