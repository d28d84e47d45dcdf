"""A Debian container booted with systemd as its PID 1 (systemd-nspawn), for system tests.

The host's PID 1 is not systemd, so the tests boot one: a cached minbase rootfs
of a Debian release (`SUITES`: 12 bookworm, systemd 252; 13 trixie, systemd 257)
(mmdebstrap, with sockd's dependencies baked in: the container has no network
and no apt lists), booted with `--volatile=overlay` so every boot starts from
the pristine rootfs. Commands run inside through `nsenter`; connections reach
the container's private network namespace through `setns()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

# The Debian releases sockd supports; each has its own rootfs (and its own build).
SUITES = ("bookworm", "trixie")
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-daemon",
    "python3-sdnotify",
    "python3-structlog",
    "iproute2",
    "man-db",
    "procps",
    # sockd-inetd's: update-inetd (a dependency), /etc/services, a finger client.
    "update-inetd",
    "netbase",
    "finger",
)
# Packages the system tests install themselves, as an administrator would:
# their .debs are downloaded into the rootfs (DEBS), not installed. fingerd
# registers with update-inetd when installed (tests/system/test_inetd.py).
DOWNLOADS = ("fingerd",)
DEBS = "/opt/sockd-tests"
CACHE = Path("/var/cache/sockd-tests")
# Where the system tests put their handler modules inside the container.
HANDLERS_DIR = "/usr/local/lib/sockd-tests"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 60.0
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def rootfs(suite: str) -> Path:
    """Return the cached rootfs of `suite` with `PACKAGES` and `DOWNLOADS`' .debs (30 s to build).

    No mirror is given: mmdebstrap uses its default, deb.debian.org (with
    security.debian.org), for either release.
    """
    listed = f"{suite} {' '.join(PACKAGES)} {' '.join(DOWNLOADS)}"
    key = hashlib.sha256(listed.encode()).hexdigest()[:12]
    path = CACHE / f"rootfs-{suite}-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / "lib/systemd/systemd").exists():
            return path
        partial = path.with_suffix(".partial")
        download = f"cd {DEBS} && apt-get download -q {' '.join(DOWNLOADS)}"
        download = f'mkdir -p "$1{DEBS}" && chroot "$1" sh -c \'{download}\''
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                # Downloaded while the root still has its apt lists and network.
                f"--customize-hook={download}",
                suite,
                str(partial),
            ],
            check=True,
            # Debian's tools first; proxies and the like as the caller has them.
            env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        partial.rename(path)
        for stale in CACHE.glob(f"rootfs-{suite}-*"):  # made for another package list
            if stale != path:
                shutil.rmtree(stale, ignore_errors=True)
    return path


class Container:
    """One booted container; `share` is visible inside, read-only, at /mnt/share."""

    def __init__(self, name: str, share: Path, workdir: Path) -> None:
        self.name = name
        self.share = share
        self.console = workdir / f"{name}.console.log"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self._cgroups = [
            Path(f"/sys/fs/cgroup/{hierarchy}/sockd-test-{name}")
            for hierarchy in ("unified", "systemd")
            if Path(f"/sys/fs/cgroup/{hierarchy}").is_dir()
        ]

    def boot(self, root: Path) -> None:
        """Boot systemd in the container and wait until the system is up."""
        for cgroup in self._cgroups:
            cgroup.mkdir(exist_ok=True)
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)
        with self.console.open("wb") as console:
            self.nspawn = subprocess.Popen(
                [
                    "/usr/bin/systemd-nspawn",
                    f"--directory={root}",
                    "--volatile=overlay",
                    "--boot",
                    f"--machine={self.name}",
                    # Both needed: the host has no system bus and no machined.
                    "--register=no",
                    "--keep-unit",
                    "--private-network",
                    "--link-journal=no",
                    "--console=read-only",
                    f"--bind-ro={self.share}:/mnt/share",
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env={"PATH": PATH, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
                # In its own host cgroup: nspawn with --keep-unit makes its
                # sub-cgroups under its caller's, which two containers must not share.
                preexec_fn=self._enter_cgroups,  # noqa: PLW1509 (writes one file per hierarchy)
                start_new_session=True,
            )
        self.leader = self._wait_for(self._find_leader, "the container's PID 1")
        self._wait_for(self._system_up, "systemd to finish booting")

    def _enter_cgroups(self) -> None:
        for cgroup in self._cgroups:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    def _wait_for(self, probe: Any, what: str) -> Any:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            assert self.nspawn is not None
            if self.nspawn.poll() is not None:
                msg = f"systemd-nspawn exited while waiting for {what}:\n{self.console.read_text()}"
                raise AssertionError(msg)
            result = probe()
            if result:
                return result
            time.sleep(0.05)
        msg = f"timed out waiting for {what}:\n{self.console.read_text()}"
        raise AssertionError(msg)

    def _find_leader(self) -> int:
        assert self.nspawn is not None
        for children in Path(f"/proc/{self.nspawn.pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                for pid in children.read_text().split():
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
        return 0

    def _system_up(self) -> bool:
        state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
        return state in {"running", "degraded"}

    def run(
        self, *argv: str, check: bool = True, stdin: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside (all namespaces, a clean environment); return its result."""
        result = subprocess.run(
            [
                "/usr/bin/nsenter",
                f"--target={self.leader}",
                "--all",
                "/usr/bin/env",
                "-i",
                f"PATH={PATH}",
                "LANG=C.UTF-8",
                "SYSTEMD_PAGER=",
                "SYSTEMD_COLORS=0",
                *argv,
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            msg = f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            raise AssertionError(msg)
        return result

    def write(self, path: str, text: str) -> None:
        """Write a file inside the container (as root), making its directory."""
        self.run("sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "sh", path, stdin=text)

    def show(self, unit: str, prop: str) -> str:
        """Return one property of a unit (`systemctl show -P`)."""
        return self.run("systemctl", "show", "-P", prop, unit).stdout.strip()

    def journal(self, *args: str) -> list[dict[str, Any]]:
        """Return the journal entries matching `args`, as journalctl's JSON objects."""
        output = self.run("journalctl", "--no-pager", "-o", "json", *args).stdout
        return [json.loads(line) for line in output.splitlines() if line.strip()]

    def connect(self, host: str, port: int, timeout: float = 10.0) -> socket.socket:
        """Connect to a TCP port in the container's network namespace."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        theirs = os.open(f"/proc/{self.leader}/ns/net", os.O_RDONLY)
        try:
            _setns(theirs)
            try:
                return socket.create_connection((host, port), timeout=timeout)
            finally:
                _setns(own)
        finally:
            os.close(own)
            os.close(theirs)

    def connect_unix(self, path: str, timeout: float = 10.0) -> socket.socket:
        """Connect to a UNIX socket inside the container, through its root directory."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(f"/proc/{self.leader}/root{path}")
        return sock

    def shutdown(self) -> None:
        """Power the container off (SIGTERM to nspawn), then remove what it left on the host."""
        if self.nspawn is not None:
            if self.nspawn.poll() is None:
                self.nspawn.send_signal(signal.SIGTERM)
                try:
                    self.nspawn.wait(30)
                except subprocess.TimeoutExpired:
                    self.nspawn.kill()
                    self.nspawn.wait()
            self.nspawn = None
        for cgroup in self._cgroups:
            for directory in sorted(cgroup.glob("**/"), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    directory.rmdir()
        # /run is on disk on these hosts, so nspawn refuses to remove this itself.
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
