"""A throwaway single-node SLURM cluster on localhost, for tests that submit real jobs.

``start_local_cluster(workdir)`` runs a private munged, then (with ``accounting``) a MariaDB server and
slurmdbd, then slurmctld and slurmd, each in the foreground as a child of this process. Every file lives
under ``workdir`` and every daemon listens on a free port of 127.0.0.1, so a cluster clashes neither with
another one nor with a system SLURM, and it can be started again after ``stop()``. Clients reach it through
``LocalSlurmCluster.env`` (``SLURM_CONF``).

Without accounting, ``sacct`` fails ("Slurm accounting storage is disabled"): submitit still returns
results, as it waits for the result file a job writes, but reports every job state as UNKNOWN. With
accounting (slurmdbd, which stores only in MySQL/MariaDB), ``sacct`` and so submitit's ``job.state`` are real.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nnunetv2_segresmamba.tools.pipeline import end_process

PARTITION = "debug"
NODE_NAME = "localnode"
CRED_EXPIRE_S = 30  # job credentials (AuthInfo cred_expire): a requeued job starts again after this, not 120 s
# The binaries each kind of cluster runs, and the Debian 12 package of each.
_BASE_BINARIES = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client",
                  "sinfo": "slurm-client", "squeue": "slurm-client", "scancel": "slurm-client", "sacct": "slurm-client"}
_ACCOUNTING_BINARIES = {"slurmdbd": "slurmdbd", "mariadbd": "mariadb-server-core",
                        "mariadb-install-db": "mariadb-server-core", "my_print_defaults": "mariadb-client-core"}
_MUNGE_SOCKET = Path("munge", "munge.socket")
_MARIADB_SOCKET = Path("mariadb", "mysqld.sock")
_UNIX_SOCKET_MAX_CHARS = 107
_POLL_S = 0.2


class SlurmUnavailable(RuntimeError):
    """The local cluster cannot run on this machine; the message says why."""


@dataclass(frozen=True)
class _Ports:
    """TCP ports on 127.0.0.1 for the daemons."""

    slurmctld: int
    slurmd: int
    slurmdbd: int
    mariadb: int

    @classmethod
    def pick_free(cls) -> _Ports:
        """Ports that are free right now (the OS hands out each only once while all four are bound)."""
        sockets = [socket.socket() for _ in range(4)]
        try:
            for sock in sockets:
                sock.bind(("127.0.0.1", 0))
            return cls(*(sock.getsockname()[1] for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()


@dataclass
class _Daemon:
    """One daemon running in the foreground, its stdout and stderr going to ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def check_alive(self) -> None:
        """Raises SlurmUnavailable, with the log's tail, if the daemon has exited."""
        if self.process.poll() is not None:
            raise SlurmUnavailable(f"{self.name} exited with code {self.process.returncode}:\n{_tail(self.log)}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if the daemon is still there after ``timeout_s``."""
        end_process(self.process, timeout_s)


@dataclass
class LocalSlurmCluster:
    """A running cluster: put ``env`` in the environment of SLURM clients and submit to ``partition``."""

    workdir: Path
    env: dict[str, str]
    accounting: bool
    partition: str = PARTITION
    _daemons: list[_Daemon] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Cancels the cluster's jobs, then stops its daemons, last started first. Safe to call twice."""
        if any(d.name == "slurmd" and d.process.poll() is None for d in self._daemons):
            self._cancel_jobs()
        while self._daemons:
            self._daemons.pop().stop()

    def __enter__(self) -> LocalSlurmCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def run(self, *argv: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Runs a SLURM client command against this cluster, capturing its output."""
        return subprocess.run(argv, env=os.environ | self.env, capture_output=True, text=True, timeout=timeout_s)

    def _spawn(self, name: str, argv: Sequence[str], ready: Callable[[], bool], deadline: float) -> None:
        """Starts a daemon and waits until ``ready()``; raises SlurmUnavailable if it dies or is too slow."""
        log = self.workdir / "log" / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       env=os.environ | self.env, start_new_session=True)
        daemon = _Daemon(name, process, log)
        self._daemons.append(daemon)
        while not ready():
            daemon.check_alive()
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"{name} was not ready in time:\n{_tail(log)}")
            time.sleep(_POLL_S)

    def _node_state(self) -> str:
        """The node's state as sinfo reports it, e.g. "idle", or "" while slurmctld does not answer."""
        result = self.run("sinfo", "--noheader", "--format=%T", f"--partition={self.partition}")
        return result.stdout.strip() if result.returncode == 0 else ""

    def _cancel_jobs(self, timeout_s: float = 15.0) -> None:
        """Cancels every job of this user and waits until the queue is empty, so no job outlives slurmd."""
        self.run("scancel", f"--user={pwd.getpwuid(os.getuid()).pw_name}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            queue = self.run("squeue", "--noheader", "--format=%i")
            if queue.returncode != 0 or not queue.stdout.strip():
                return
            time.sleep(_POLL_S)


def start_local_cluster(workdir: Path, *, accounting: bool = True, timeout_s: float = 60.0) -> LocalSlurmCluster:
    """Starts a one-node cluster under ``workdir`` and waits until its node is idle in partition ``debug``.

    Raises SlurmUnavailable, saying why, if a binary is missing or a daemon fails; nothing is left running then.
    """
    binaries = _find_binaries(_BASE_BINARIES | (_ACCOUNTING_BINARIES if accounting else {}))
    workdir = _prepare_workdir(workdir)
    ports = _Ports.pick_free()
    _write_conf(workdir / "slurm.conf", _slurm_conf(workdir, ports, accounting))
    if accounting:
        _write_conf(workdir / "slurmdbd.conf", _slurmdbd_conf(workdir, ports), mode=0o600)
    cluster = LocalSlurmCluster(workdir, env={"SLURM_CONF": str(workdir / "slurm.conf")}, accounting=accounting)
    deadline = time.monotonic() + timeout_s
    try:
        _start_daemons(cluster, binaries, ports, deadline)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _find_binaries(packages: dict[str, str]) -> dict[str, str]:
    """Absolute paths of the binaries keyed in ``packages``, looked up in PATH and the sbin folders.

    Raises SlurmUnavailable naming the missing binaries and the Debian packages that hold them.
    """
    search_path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = {name: shutil.which(name, path=search_path) for name in packages}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        to_install = " ".join(sorted({packages[name] for name in missing}))
        raise SlurmUnavailable(f"not installed: {', '.join(missing)} (apt-get install {to_install})")
    return {name: path for name, path in found.items() if path is not None}


def _prepare_workdir(workdir: Path) -> Path:
    """Checks that the cluster can live in ``workdir``, creates its folders and returns its absolute path."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("the local SLURM cluster must run as root (slurmd starts each job as its user)")
    workdir = workdir.resolve()
    longest_socket = workdir / max(_MUNGE_SOCKET, _MARIADB_SOCKET, key=lambda path: len(str(path)))
    if len(str(longest_socket)) > _UNIX_SOCKET_MAX_CHARS:
        raise SlurmUnavailable(f"work directory too long for a unix socket path: {longest_socket}")
    for folder in ("munge", "mariadb", "log", "state", "spool", "run"):
        (workdir / folder).mkdir(mode=0o700, parents=True, exist_ok=True)
    return workdir


def _start_daemons(cluster: LocalSlurmCluster, binaries: dict[str, str], ports: _Ports, deadline: float) -> None:
    """munged, then mariadbd and slurmdbd with accounting, then slurmctld and slurmd, each once the last is ready."""
    _start_munged(cluster, binaries["munged"], deadline)
    if cluster.accounting:
        _start_mariadb(cluster, binaries, ports.mariadb, deadline)
        cluster._spawn("slurmdbd", [binaries["slurmdbd"], "-D"], lambda: _port_open(ports.slurmdbd), deadline)
    cluster._spawn("slurmctld", [binaries["slurmctld"], "-D"], lambda: cluster._node_state() != "", deadline)
    cluster._spawn("slurmd", [binaries["slurmd"], "-D", "-N", NODE_NAME],
                   lambda: cluster._node_state() == "idle", deadline)


def _start_munged(cluster: LocalSlurmCluster, munged: str, deadline: float) -> None:
    """A private munged with a fresh key; --force because pytest's tmp folders are not world-executable."""
    socket_path = cluster.workdir / _MUNGE_SOCKET
    key = socket_path.parent / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    argv = [munged, "--foreground", "--force", f"--socket={socket_path}", f"--key-file={key}",
            f"--pid-file={key.parent / 'munged.pid'}", f"--seed-file={key.parent / 'munged.seed'}",
            f"--log-file={cluster.workdir / 'log' / 'munged.log'}"]
    cluster._spawn("munged", argv, socket_path.exists, deadline)


def _start_mariadb(cluster: LocalSlurmCluster, binaries: dict[str, str], port: int, deadline: float) -> None:
    """A small MariaDB server on 127.0.0.1:``port`` whose root needs no password, its data made on first use."""
    socket_path = cluster.workdir / _MARIADB_SOCKET
    common = ["--no-defaults", "--user=root", f"--datadir={socket_path.parent / 'data'}",
              "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M"]
    install = subprocess.run([binaries["mariadb-install-db"], *common, "--auth-root-authentication-method=normal",
                              "--skip-test-db"], capture_output=True, text=True)
    if install.returncode != 0:
        raise SlurmUnavailable(f"mariadb-install-db failed:\n{(install.stdout + install.stderr)[-3000:]}")
    argv = [binaries["mariadbd"], *common, "--bind-address=127.0.0.1", f"--port={port}", f"--socket={socket_path}",
            f"--pid-file={socket_path.parent / 'mysqld.pid'}"]
    cluster._spawn("mariadbd", argv, socket_path.exists, deadline)


def _slurm_conf(workdir: Path, ports: _Ports, accounting: bool) -> list[str]:
    """slurm.conf: one node with every CPU and 90% of the memory, no cgroups, accounting to slurmdbd or none."""
    munge_socket = workdir / _MUNGE_SOCKET
    if accounting:  # slurmdbd's clients find munged through AccountingStoragePass, not AuthInfo
        storage = ["AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=127.0.0.1",
                   f"AccountingStoragePort={ports.slurmdbd}", f"AccountingStoragePass={munge_socket}"]
    else:
        storage = ["AccountingStorageType=accounting_storage/none"]
    return [
        "ClusterName=localcluster",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={ports.slurmctld}",
        f"SlurmdPort={ports.slurmd}",
        "SlurmUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # cred_expire: also how long a requeued job waits before it may start again (default 120 s)
        f"AuthInfo=socket={munge_socket},cred_expire={CRED_EXPIRE_S}",
        f"StateSaveLocation={workdir / 'state'}",
        f"SlurmdSpoolDir={workdir / 'spool'}",
        f"SlurmctldPidFile={workdir / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={workdir / 'run' / 'slurmd.pid'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "ReturnToService=2",
        "JobAcctGatherType=jobacct_gather/none",
        "MpiDefault=none",
        "MailProg=/bin/true",
        *storage,
        f"NodeName={NODE_NAME} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={_real_memory_mb()} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ]


def _slurmdbd_conf(workdir: Path, ports: _Ports) -> list[str]:
    """slurmdbd.conf, which slurmdbd reads from beside SLURM_CONF; it must be SlurmUser's with mode 600."""
    return [
        "AuthType=auth/munge",
        f"AuthInfo=socket={workdir / _MUNGE_SOCKET}",
        "DbdHost=localhost",
        "DbdAddr=127.0.0.1",
        f"DbdPort={ports.slurmdbd}",
        "SlurmUser=root",
        f"PidFile={workdir / 'run' / 'slurmdbd.pid'}",
        "StorageType=accounting_storage/mysql",
        "StorageHost=127.0.0.1",
        f"StoragePort={ports.mariadb}",
        "StorageUser=root",
        "StorageLoc=slurm_acct_db",
    ]


def _write_conf(path: Path, lines: list[str], mode: int = 0o644) -> None:
    """Writes a config file, one setting a line."""
    path.write_text("\n".join(lines) + "\n")
    path.chmod(mode)


def _real_memory_mb() -> int:
    """90% of MemTotal in MiB: slurmd drains a node that has less memory than slurm.conf claims."""
    with open("/proc/meminfo") as meminfo:
        total_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return int(total_kib / 1024 * 0.9)


def _port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _tail(log: Path, max_chars: int = 3000) -> str:
    """The end of a daemon's log, for error messages."""
    try:
        return log.read_text(errors="replace")[-max_chars:]
    except OSError as exc:
        return f"(no log: {exc})"
