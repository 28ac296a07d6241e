"""Real single-node clusters on 127.0.0.1 for the engine tiers: Slurm (from Debian's packages) and Ray.

Everything lives under a temporary folder (configs, keys, sockets, state, logs); nothing is written to /etc and
every daemon is stopped by PID at the end. Each context manager yields the environment a client needs
(SLURM_CONF, or RAY_ADDRESS) or raises `Unavailable` with the reason, which the tests turn into a skip.

Slurm needs slurmdbd (and so MariaDB) as well as slurmctld and slurmd: submitit learns that a job ended, and how,
through sacct; without accounting it waits for ever on a job that crashed.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SLURM_BINARIES = ["munged", "mariadb-install-db", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct"]


class Unavailable(RuntimeError):
    """The engine is not installed or would not start; the message says which."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, log: Path | None, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.25)
    tail = log.read_text()[-2000:] if log and log.exists() else ""
    raise Unavailable(f"{what} did not come up within {timeout:.0f} s\n{tail}")


def _ok(*cmd: str, env: dict | None = None) -> bool:
    return subprocess.run(cmd, check=False, capture_output=True, env=env).returncode == 0


class _Daemons:
    """Processes started by this test, stopped in reverse order (SIGTERM, then SIGKILL to the process group)."""

    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen | int]] = []

    def start(self, name: str, cmd: list[str], log: Path, env: dict | None = None) -> None:
        with open(log, "ab") as f:
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append((name, p))

    def adopt(self, name: str, pid_file: Path) -> None:
        """A daemon that forked itself: remember its PID from its pid file."""
        _wait(lambda: pid_file.exists() and pid_file.read_text().strip(), f"{name} pid file", None, 20)
        self.procs.append((name, int(pid_file.read_text().strip())))

    def stop(self) -> None:
        for _, p in reversed(self.procs):
            pid = p.pid if isinstance(p, subprocess.Popen) else p
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 10
        for _, p in reversed(self.procs):
            pid = p.pid if isinstance(p, subprocess.Popen) else p
            while time.time() < deadline and _alive(pid):
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL) if isinstance(p, subprocess.Popen) else os.kill(pid, signal.SIGKILL)
            if isinstance(p, subprocess.Popen):
                p.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def slurm(root: Path, cpus: int | None = None):
    """A one-node Slurm cluster with accounting, all under `root`. Yields the client environment."""
    missing = [b for b in SLURM_BINARIES if not shutil.which(b)]
    if missing:
        raise Unavailable(f"Slurm tier needs {', '.join(missing)} (Debian: apt-get install slurmctld slurmd "
                          "slurm-client slurmdbd munge mariadb-server)")
    if os.geteuid() != 0:
        raise Unavailable("the Slurm tier runs its daemons as root (slurmd must be able to launch jobs)")
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    user = getpass.getuser()
    cpus = cpus or len(os.sched_getaffinity(0))
    hostname = socket.gethostname().split(".")[0]
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 * 9 // 10
    daemons = _Daemons()
    try:
        # munge: its own key, socket and state
        munge = root / "munge"
        munge.mkdir(mode=0o700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = munge / "munge.socket"
        _ok("munged", f"--key-file={key}", f"--socket={sock}", f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}", "--force")
        daemons.adopt("munged", munge / "munged.pid")
        _wait(sock.exists, "munged", munge / "munged.log", 20)

        # MariaDB for slurmdbd, on a loopback TCP port
        db = root / "mariadb"
        db_port = _free_port()
        subprocess.run(["mariadb-install-db", f"--datadir={db / 'data'}", f"--user={user}",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True)
        daemons.start("mariadbd", ["mariadbd", "--no-defaults", f"--datadir={db / 'data'}", f"--user={user}",
                                   f"--socket={db / 'mysql.sock'}", f"--port={db_port}", "--bind-address=127.0.0.1",
                                   f"--pid-file={db / 'mariadbd.pid'}", "--innodb-buffer-pool-size=64M"],
                      db / "mariadbd.log")
        _wait(lambda: (db / "mysql.sock").exists(), "mariadbd", db / "mariadbd.log", 60)

        # Slurm: accounting daemon, controller, one node daemon
        state = root / "slurm"
        for sub in ("state", "spool", "log"):
            (state / sub).mkdir(parents=True)
        dbd_port, ctld_port, slurmd_port = _free_port(), _free_port(), _free_port()
        auth = f"AuthType=auth/munge\nAuthInfo=socket={sock}\n"
        dbd_conf = state / "slurmdbd.conf"  # slurmdbd reads it from beside SLURM_CONF
        dbd_conf.write_text(
            f"{auth}DbdHost=localhost\nDbdAddr=127.0.0.1\nDbdPort={dbd_port}\nSlurmUser={user}\n"
            f"StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\nStoragePort={db_port}\n"
            f"StorageUser=root\nStorageLoc=slurm_acct\nPidFile={state / 'slurmdbd.pid'}\n"
            f"LogFile={state / 'log/slurmdbd.log'}\nDebugLevel=info\n")
        dbd_conf.chmod(0o600)
        conf = state / "slurm.conf"
        conf.write_text(
            f"ClusterName=scalingtest\nSlurmctldHost={hostname}(127.0.0.1)\nSlurmUser={user}\n{auth}"
            f"SlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n"
            f"StateSaveLocation={state / 'state'}\nSlurmdSpoolDir={state / 'spool'}\n"
            f"SlurmctldPidFile={state / 'slurmctld.pid'}\nSlurmdPidFile={state / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={state / 'log/slurmctld.log'}\nSlurmdLogFile={state / 'log/slurmd.log'}\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/affinity\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n"
            "JobAcctGatherType=jobacct_gather/none\nMpiDefault=none\nReturnToService=2\n"
            "SchedulerType=sched/backfill\nSlurmdTimeout=300\nInactiveLimit=0\nKillWait=5\nMinJobAge=300\n"
            f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
            f"AccountingStoragePort={dbd_port}\nAccountingStoragePass={sock}\n"
            f"NodeName={hostname} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN\n"
            f"PartitionName=test Nodes={hostname} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO\n")
        env = {**os.environ, "SLURM_CONF": str(conf)}
        daemons.start("slurmdbd", ["slurmdbd", "-D"], state / "log/slurmdbd.out", env)
        _wait(lambda: _port_open(dbd_port), "slurmdbd", state / "log/slurmdbd.log", 60)
        daemons.start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)], state / "log/slurmctld.out", env)
        _wait(lambda: _ok("scontrol", "ping", env=env), "slurmctld", state / "log/slurmctld.log", 30)
        # register the cluster with accounting (idempotent), then start the node
        subprocess.run(["sacctmgr", "-i", "add", "cluster", "scalingtest"], check=False, capture_output=True, env=env)
        daemons.start("slurmd", ["slurmd", "-D", "-N", hostname, "-f", str(conf)], state / "log/slurmd.out", env)
        _wait(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%t"], check=False, capture_output=True,
                                              text=True, env=env).stdout,
              "slurmd (node idle)", state / "log/slurmd.log", 30)
        yield env
    finally:
        daemons.stop()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def ray_head(root: Path, cpus: int = 2):
    """A Ray head node on 127.0.0.1 started with `ray start --head`. Yields the environment with RAY_ADDRESS."""
    if not shutil.which("ray"):
        raise Unavailable("Ray tier needs the ray CLI: pip install 'scaling[ray]'")
    try:
        import hydra_plugins.hydra_ray_launcher  # noqa: F401
    except ImportError:
        raise Unavailable("Ray tier needs hydra-ray-launcher: pip install 'scaling[ray]'") from None
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    temp = Path("/tmp") / f"ray-{os.getpid()}"  # short: Ray's socket paths must fit in 107 bytes
    daemons = _Daemons()
    try:
        # --block keeps `ray start` in the foreground as the parent of every Ray process, all in one new process
        # group, so stopping the group stops exactly this cluster
        daemons.start("ray", ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                              f"--num-cpus={cpus}", "--include-dashboard=false", "--disable-usage-stats",
                              f"--temp-dir={temp}"], root / "ray.log", env)
        address = f"127.0.0.1:{port}"
        _wait(lambda: _ok("ray", "status", f"--address={address}", env=env), "ray head", root / "ray.log", 60)
        yield {**env, "RAY_ADDRESS": address}
    finally:
        daemons.stop()
        shutil.rmtree(temp, ignore_errors=True)
