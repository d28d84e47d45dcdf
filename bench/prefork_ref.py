"""The minimal pre-forked reference server: N processes accepting on one socket in a loop.

Each worker blocks in accept(), reads one line, sends it back, closes, and accepts again:
the least a Python server can do per connection, with no fork per connection, no logging
and no limits. bench/pool.py compares sockd's pooled mode (`workers = N`) with it, under the
same interpreter. Prints the port it listens on, then serves until SIGTERM, which it passes
on to the workers.

    python bench/prefork_ref.py [--host 127.0.0.1] [--port 0] [--workers 4]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys

BACKLOG = socket.SOMAXCONN  # the kernel caps it at net.core.somaxconn


def serve(listener: socket.socket) -> None:
    """Serve connections one after another: one line each, echoed back. Never returns."""
    while True:
        conn, _ = listener.accept()
        # A client that resets its connection costs that connection, not the worker.
        with conn, contextlib.suppress(OSError):
            line = b""
            while not line.endswith(b"\n"):
                data = conn.recv(4096)
                if not data:
                    break
                line += data
            conn.sendall(line)


def stop_workers(workers: list[int]) -> None:
    """SIGTERM every worker and reap them all."""
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    for pid in workers:
        os.waitpid(pid, 0)


def main(argv: list[str] | None = None) -> int:
    """Listen, fork the workers, print the port, and wait for SIGTERM or a worker's death."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    listener = socket.create_server((args.host, args.port), backlog=BACKLOG)
    port = listener.getsockname()[1]
    # Blocked before forking: the workers inherit the mask and unblock it; the parent
    # receives SIGTERM only through sigwait below.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})
    workers: list[int] = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            try:
                serve(listener)
            finally:
                os._exit(1)
        workers.append(pid)
    listener.close()
    print(port, flush=True)
    received = signal.sigwait({signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})
    if received == signal.SIGCHLD:
        print("prefork_ref: a worker exited", file=sys.stderr)
    stop_workers(workers)
    return 1 if received == signal.SIGCHLD else 0


if __name__ == "__main__":
    sys.exit(main())
