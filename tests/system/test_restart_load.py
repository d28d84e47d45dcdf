"""Restart under load: `systemctl restart sockd` every second for 20 s loses no connection."""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

from harness import recv_all

if TYPE_CHECKING:
    from nspawn import Container

CONFIG = "/etc/sockd/sockd.toml"
ECHO = "127.0.0.1:7"  # sockd.socket's
CLIENTS = 4
RESTARTS_FOR = 20.0
RESTART_EVERY = 1.0


def test_restart_every_second_for_20_s_refuses_and_resets_no_connection(
    machine: Container,
) -> None:
    """Clients of the socket-activated echo never see a refusal, a reset or a short answer.

    The listening socket belongs to sockd.socket: while sockd.service stops and
    starts again, new connections wait in its backlog; the connections in
    progress are finished by the stopping sockd (KillMode=mixed).
    """
    # Echo without the packaged config's per_source: its refusals are not what this measures.
    machine.write(CONFIG, f'[[service]]\nname = "echo"\nhandler = "echo"\nlisten = ["{ECHO}"]\n')
    machine.run("systemctl", "restart", "sockd.service")
    served = [0] * CLIENTS
    refused: list[str] = []
    reset: list[str] = []
    wrong: list[bytes] = []
    stop = threading.Event()

    def client(index: int) -> None:
        while not stop.is_set():
            line = b"client %d line %d\n" % (index, served[index])
            try:
                with machine.connect("127.0.0.1", 7, timeout=30.0) as sock:
                    sock.sendall(line)
                    sock.shutdown(socket.SHUT_WR)
                    answer = recv_all(sock)
            except ConnectionRefusedError as exc:
                refused.append(repr(exc))
                continue
            except OSError as exc:  # reset, broken pipe, timeout
                reset.append(repr(exc))
                continue
            if answer != line:
                wrong.append(answer)
            served[index] += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(CLIENTS)]
    for thread in threads:
        thread.start()
    pids = {machine.show("sockd.service", "MainPID")}
    restarts = 0
    try:
        began = time.monotonic()
        while time.monotonic() - began < RESTARTS_FOR:
            machine.run("systemctl", "restart", "sockd.service")
            restarts += 1
            pids.add(machine.show("sockd.service", "MainPID"))
            time.sleep(max(0.0, began + restarts * RESTART_EVERY - time.monotonic()))
        after = sum(served)
        time.sleep(1)  # the last sockd serves too
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert refused == []
    assert reset == []
    assert wrong == []
    assert len(pids) >= restarts >= RESTARTS_FOR / RESTART_EVERY / 2, (restarts, pids)
    assert min(served) > 0
    assert sum(served) > after
    assert machine.show("sockd.service", "ActiveState") == "active"
