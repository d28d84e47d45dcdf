"""The daemon's sd_notify(3) via `sdnotify`: never raises or waits; no-op without NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING

import structlog

from sockd.ipc import Tally
from sockd.listeners import ascii_number

if TYPE_CHECKING:
    from collections.abc import Iterable, MutableMapping, Sequence

log = structlog.get_logger()

STATUS_INTERVAL = 1.0
WATCHDOG_FLOOR = 0.01  # seconds: WATCHDOG=1 is never sent more often
RETRY_INTERVAL = 0.1  # seconds between tries of a state that found the socket full


def status_text(
    active: int, served: int, denied: int, errors: int, at_cap: Iterable[str] = ()
) -> str:
    """Return the STATUS= text for the daemon's counters, and the services at a cap now."""
    text = f"{active} active, {served} served, {denied} denied, {errors} errors"
    capped = ", ".join(at_cap)
    return f"{text}, at cap: {capped}" if capped else text


class Notifier:
    """The daemon's channel to systemd: readiness, status, reload, stop and watchdog.

    It takes NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID and FDSTORE out of the
    environment when created, so children never inherit them.
    """

    def __init__(self, environ: MutableMapping[str, str], pid: int) -> None:
        """Read and remove systemd's notification variables from `environ`."""
        address = environ.pop("NOTIFY_SOCKET", "")
        watchdog_usec = environ.pop("WATCHDOG_USEC", "")
        watchdog_pid = environ.pop("WATCHDOG_PID", "")
        # How many descriptors systemd keeps for us (FileDescriptorStoreMax=; systemd 254+ says so).
        self.fd_store = bool(ascii_number(environ.pop("FDSTORE", "")))
        self._socket = None
        self.watchdog_interval: float | None = None
        self._last_status = float("-inf")
        self._pending_status: str | None = None
        self.last_status_text = status_text(0, 0, 0, 0)
        self._next_watchdog = float("inf")
        self._failures = Tally()
        self._unsent: list[str] = []  # states systemd must get, waiting for room (see send)
        if not address:
            return
        import sdnotify  # noqa: PLC0415 (only needed under systemd)

        saved = os.environ.get("NOTIFY_SOCKET")
        os.environ["NOTIFY_SOCKET"] = address  # sdnotify reads it from os.environ
        try:
            self._socket = sdnotify.SystemdNotifier(debug=True)
            # A reader that stalls must not stall us: a message it cannot take is lost.
            self._socket.socket.setblocking(False)
        except OSError as exc:
            log.warning("notify_failed", socket=address, error=str(exc))
        finally:
            if saved is None:
                os.environ.pop("NOTIFY_SOCKET", None)
            else:
                os.environ["NOTIFY_SOCKET"] = saved
        ours = not watchdog_pid or ascii_number(watchdog_pid) == pid
        usec = ascii_number(watchdog_usec, 20)  # garbage: no watchdog (sd_watchdog_enabled(3))
        if usec and ours:
            # Half the timeout, as sd_watchdog_enabled(3) advises; not a busy loop for 1 µs.
            self.watchdog_interval = max(usec / 2e6, WATCHDOG_FLOOR)
            self._next_watchdog = time.monotonic()

    @property
    def enabled(self) -> bool:
        """True when there is a NOTIFY_SOCKET to talk to."""
        return self._socket is not None

    def send(self, state: str, *, keep: bool = False) -> bool:
        """Send `state` without waiting; a failure is logged (bounded by `Tally`), never raised.

        With `keep`, a state systemd must not miss (READY=1, RELOADING=1,
        STOPPING=1) that finds the socket full is sent again by `tick()`, in order.
        """
        if self._socket is None:
            return True
        if keep and self._unsent:
            self._unsent.append(state)  # after those still waiting
            return False
        try:
            self._socket.notify(state)
        except OSError as exc:
            if keep and isinstance(exc, BlockingIOError):
                self._unsent.append(state)
            fields = self._failures.add(exc.strerror or str(exc))
            if fields is not None:
                log.warning("notify_failed", state=state.split("\n", 1)[0], **fields)
            return False
        return True

    def _send_unsent(self) -> None:
        """Send again, in order, the states that found the socket full."""
        while self._unsent and self._socket is not None:
            try:
                self._socket.notify(self._unsent[0])
            except BlockingIOError:
                return  # still full: at the next tick
            except OSError:
                pass  # gone for good: logged when it first failed
            del self._unsent[0]

    def ready(self, status: str) -> None:
        """Tell systemd we serve: READY=1 with a first STATUS=."""
        self.send(f"READY=1\nSTATUS={status}", keep=True)
        self._last_status = time.monotonic()

    def reloading(self) -> None:
        """RELOADING=1 with the CLOCK_MONOTONIC timestamp systemd expects."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}", keep=True)

    def store(self, name: str, fds: Sequence[int]) -> None:
        """Have systemd keep `fds` under `name` (FDNAME=), in place of what it kept under it.

        A no-op unless systemd keeps descriptors for us (FDSTORE). A failure is
        logged, never raised: the sockets then close at a restart, as without a store.
        """
        if self._socket is None or not self.fd_store:
            return
        self.send(f"FDSTOREREMOVE=1\nFDNAME={name}")
        if not fds:
            return
        try:
            socket.send_fds(self._socket.socket, [f"FDSTORE=1\nFDNAME={name}".encode()], fds)
        except OSError as exc:
            log.warning("notify_failed", state="FDSTORE=1", error=exc.strerror or str(exc))

    def stopping(self) -> None:
        """STOPPING=1."""
        self.send("STOPPING=1", keep=True)

    def status(self, text: str) -> None:
        """Queue STATUS=text; `tick()` sends it at most once a second."""
        self._pending_status = text
        self.last_status_text = text

    def tick(self, *, healthy: bool = True, now: float | None = None) -> float:
        """Send what is due (watchdog, status); return seconds until the next duty.

        Args:
            healthy: False withholds WATCHDOG=1, so that systemd's watchdog
                catches a daemon that runs but no longer serves.
            now: the time.monotonic() it is (default: read it).
        """
        if now is None:
            now = time.monotonic()
        self._send_unsent()
        if now >= self._next_watchdog and self.watchdog_interval is not None:
            if healthy:
                self.send("WATCHDOG=1")
            self._next_watchdog = now + self.watchdog_interval
        if self._pending_status is not None and now - self._last_status >= STATUS_INTERVAL:
            self.send(f"STATUS={self._pending_status}")
            self._pending_status = None
            self._last_status = now
        due = self._next_watchdog
        if self._unsent:
            due = min(due, now + RETRY_INTERVAL)
        if self._pending_status is not None:
            due = min(due, self._last_status + STATUS_INTERVAL)
        return max(0.0, due - now)

    def close(self) -> None:
        """Drop the connection to systemd."""
        if self._socket is not None and self._socket.socket is not None:
            self._socket.socket.close()
        self._socket = None
