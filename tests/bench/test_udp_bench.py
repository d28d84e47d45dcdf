"""Tests of bench/udp.py: its load generators count answers and losses; a quick run serves."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from quick_run import CLIENTS, quick_run

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the benchmark's code is the package bench, at the root

from bench import udp  # noqa: E402 (needs the root on sys.path)
from bench.common import build_loadgen  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Iterator

INETD_HINT = "openbsd-inetd is missing: run scripts/setup --tests (it installs the package)"


class Lossy:
    """A UDP echo on ::1 that drops every third datagram of a client, and answers others twice.

    The second answer of each comes when the client waits for its next datagram's: a
    generator that took it for that one's would count more answers than were given.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.sock.bind((udp.HOST, 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.answered = 0
        self.dropped = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, sender = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            if int(data[:8], 16) % 3 == 0:
                self.dropped += 1
                continue
            self.answered += 1
            self.sock.sendto(data, sender)
            self.sock.sendto(data, sender)


@pytest.fixture
def lossy() -> Iterator[Lossy]:
    server = Lossy()
    server.thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.thread.join(10)
        server.sock.close()


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the C client with the machine's gcc, as the benchmark does."""
    assert shutil.which("gcc"), "gcc is missing: the benchmark builds its C client with it"
    return build_loadgen(tmp_path_factory.mktemp("build"))[0]


def c_generator(loadgen: Path, port: int, clients: int, duration: float) -> dict[str, Any]:
    """Run `loadgen --udp` against `port` of ::1 (timeout 1 s); return its report."""
    command = [str(loadgen), "--udp", "--host", udp.HOST, "--port", str(port)]
    command += ["--clients", str(clients), "--duration", str(duration), "--timeout", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def python_generator(port: int, clients: int, duration: float) -> dict[str, Any]:
    """Run bench/udp.py's DatagramGenerator against `port` of ::1 (timeout 1 s)."""
    load = udp.DatagramGenerator(port, clients, duration, 1.0).run()
    return {"completed": load.completed, "errors": load.errors}


class TestGenerators:
    """Both datagram generators, against a server that drops and repeats (no timing asserted)."""

    @pytest.mark.parametrize("generator", ["c", "python"])
    def test_answers_and_losses_counted_once(
        self, generator: str, lossy: Lossy, loadgen: Path
    ) -> None:
        """Each answer counts once (a repeat is stale, ignored); each drop is one timeout."""
        # Each client: two answered, the third dropped at once; its 1 s timeout outlasts
        # the 0.5 s window, so nothing more is sent.
        if generator == "c":
            report = c_generator(loadgen, lossy.port, 3, 0.5)
        else:
            report = python_generator(lossy.port, 3, 0.5)
        assert (lossy.answered, lossy.dropped) == (6, 3)
        assert report["completed"] == 6, report
        assert report["errors"]["timeout"] == 3, report

    @pytest.mark.parametrize("generator", ["c", "python"])
    def test_nothing_listening_is_refused(self, generator: str, loadgen: Path) -> None:
        """A port where nothing listens: the datagrams are refused (ICMP), none answered."""
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind((udp.HOST, 0))
            port = probe.getsockname()[1]
        if generator == "c":
            report = c_generator(loadgen, port, 2, 0.2)
        else:
            report = python_generator(port, 2, 0.2)
        assert report["completed"] == 0, report
        assert report["errors"]["refused"] > 0, report


def inetd_here() -> None:
    assert os.access("/usr/sbin/inetd", os.X_OK), INETD_HINT


@pytest.mark.slow
class TestUdpBench:
    """`bench/udp.py --quick` as the suite runs it; no timing is asserted (noisy machines)."""

    @pytest.mark.timeout(180)
    @pytest.mark.parametrize("client", ["c", "python"])
    def test_quick_run_serves_the_references(self, client: str, tmp_path: Path) -> None:
        """Both references answer at 1 and 8 clients without a loss, with either generator."""
        inetd_here()
        stdout, data = quick_run("udp.py", tmp_path, ("--client", client))
        cells = {(cell["server"], cell["clients"]): cell for cell in data["cells"]}
        for server in (udp.REFERENCE, "inetd"):
            for clients in CLIENTS:
                cell = cells[server, clients]
                assert cell["completed"] > 0, cell
                assert not any(cell["errors"].values()), cell
        assert set(data["not_run"]) <= {"sockd"}, data["not_run"]
        line = r"^ratio inetd/udpserver conn/s at +1 clients: \d"
        assert re.search(line, stdout, re.MULTILINE), stdout
        assert "[::1]:echo dgram udp6 wait root internal" in data["meta"]["inetd_config"]

    @pytest.mark.timeout(180)
    def test_sockd_answers_udp_echo(self, tmp_path: Path) -> None:
        """The UDP echo of sockd answers at 1 and 8 clients without a loss; its ratio printed."""
        assert udp.sockd_refuses() is None
        inetd_here()
        log = tmp_path / "sockd.jsonl"
        stdout, data = quick_run("udp.py", tmp_path, ("--sockd-log", str(log)))
        assert data["not_run"] == {}, data["not_run"]
        cells = {(cell["server"], cell["clients"]): cell for cell in data["cells"]}
        for clients in CLIENTS:
            cell = cells["sockd", clients]
            assert cell["completed"] > 0, cell
            assert not any(cell["errors"].values()), cell
            line = rf"^ratio sockd/udpserver conn/s at +{clients} clients: \d"
            assert re.search(line, stdout, re.MULTILINE), stdout
        assert log.stat().st_size > 0

    @pytest.mark.timeout(300)
    def test_run_py_runs_the_udp_mode(self, tmp_path: Path) -> None:
        """`bench/run.py --modes udp` measures the mode and writes it in the JSON and the page."""
        inetd_here()
        report, page = tmp_path / "latest.json", tmp_path / "perf.md"
        result = subprocess.run(
            [
                sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--modes", "udp",
                "--build-dir", str(tmp_path / "build"), "--json", str(report),
                "--png", str(tmp_path / "perf.png"), "--markdown", str(page),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=290,
            check=False,
        )  # fmt: skip
        outcome = json.loads(report.read_text())["modes"]["udp"]
        # 2: sockd left out (no UDP yet), and said why; 0 once it serves UDP.
        assert result.returncode == (2 if outcome["not_run"] else 0), result.stderr
        assert outcome["failure"] is None, outcome["failure"]
        assert set(outcome["not_run"]) <= {"sockd"}, outcome["not_run"]
        rows = {(row["server"], row["clients"]) for row in outcome["rows"]}
        assert {(udp.REFERENCE, 8), ("inetd", 8)} <= rows, rows
        assert re.search(r"^\| udp \| inetd \| 8 \| \d+ ", page.read_text(), re.MULTILINE)
