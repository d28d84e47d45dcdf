"""Tests of sockd.supervisor.config: TOML loading, validation and the effective config."""

from __future__ import annotations

import ipaddress
import os
import re
import resource
import tomllib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from sockd.errors import ConfigError
from sockd.spec import Limits
from sockd.supervisor import config, sockets
from sockd.supervisor.rlimits import RESOURCES

if TYPE_CHECKING:
    from pathlib import Path

GOOD = """
[daemon]
stop_timeout = 5
max_children = 10
renew_forker_after = 0

[[service]]
name = "echo"
handler = "echo"
listen = ["127.0.0.1:7007", "[::1]:7007", "unix:/run/sockd/echo.sock"]
max_children = 3
allow = ["127.0.0.0/8", "::1"]
deny = ["127.0.0.2"]
unix_mode = 0o660

[[service]]
name = "chargen"
handler = "chargen"
listen = ["localhost:7019"]
"""


def load_text(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "sockd.toml"
    path.write_text(text)
    return config.load(str(path))


class TestLoad:
    def test_good_config(self, tmp_path: Path) -> None:
        """A full config loads into dataclasses with the values written."""
        loaded = load_text(tmp_path, GOOD)
        assert loaded.daemon.stop_timeout == 5.0
        assert loaded.daemon.max_children == 10
        assert loaded.daemon.renew_forker_after == 0
        echo, chargen = loaded.services
        assert echo.listen == (
            config.ListenAddress("tcp", "127.0.0.1", 7007),
            config.ListenAddress("tcp", "::1", 7007),
            config.ListenAddress("unix", path="/run/sockd/echo.sock"),
        )
        assert echo.allow == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1"))
        assert echo.unix_mode == 0o660
        assert echo.max_duration is None
        assert chargen.max_duration == config.CHARGEN_DEFAULT_MAX_DURATION

    def test_frozen(self, tmp_path: Path) -> None:
        """The loaded config cannot be changed by accident."""
        loaded = load_text(tmp_path, GOOD)
        with pytest.raises(AttributeError):
            loaded.services[0].name = "x"  # type: ignore[misc]

    @pytest.mark.parametrize(
        ("text", "where"),
        [
            ("[daemon]\nbogus = 1\n" + GOOD.split("[daemon]")[1], "daemon.bogus: unknown key"),
            (GOOD + "colour = 'red'\n", "service 'chargen': colour: unknown key"),
            ("[daemon]\nstop_timeout = 'x'\n", "daemon.stop_timeout: expected a number, got str"),
            ("[daemon]\nmax_children = true\n", "daemon.max_children: expected an integer"),
            ("[daemon]\nmax_children = 0\n", "daemon.max_children: must be at least 1"),
            ("[daemon]\nrenew_forker_after = -1\n", "daemon.renew_forker_after: must be at"),
            ("[daemon]\nuser = 'no-such-user-x'\n", "daemon.user: no such user"),
            ("[daemon]\ngroup = 'no-such-group-x'\n", "daemon.group: no such group"),
            ("[[service]]\nhandler = 'echo'\n", "service[0].name: required key is missing"),
            ("[[service]]\nname = 'a b'\nhandler = 'echo'\n", "service[0].name: 'a b' must be"),
            ("[[service]]\nname = 'e'\n", "service 'e': handler: give either handler or exec"),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nlisten = ['nope']\n",
                "service 'e': listen[0]: bad address 'nope'",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nlisten = '127.0.0.1:1'\n",
                "service 'e': listen: expected a list, got str",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nallow = [5]\n",
                "service 'e': allow[0]: 5 is not an address or CIDR network",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nallow = ['10.0.0.300']\n",
                "service 'e': allow[0]: '10.0.0.300' is not an address or CIDR network",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nunix_mode = 777\n",
                "service 'e': unix_mode: 777 is 0o1411, not a file mode from 0 to 0o777",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'nosuch'\n",
                "service 'e': handler: cannot load 'nosuch': expected one of",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'no_such_module_x:H'\n",
                "service 'e': handler: cannot load 'no_such_module_x:H': No module named",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'broken_at_import:H'\n",
                "cannot load 'broken_at_import:H': RuntimeError: this module is broken on purpose",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'socketserver:TCPServer'\n",
                "TCPServer is not a socketserver.BaseRequestHandler subclass",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\n" * 2,
                "service 'e': name: duplicate service name",
            ),
            (
                (
                    "[[service]]\nname = 'a'\nhandler = 'echo'\nlisten = ['127.0.0.1:9']\n"
                    "[[service]]\nname = 'b'\nhandler = 'echo'\nlisten = ['127.0.0.1:9']\n"
                ),
                "service 'b': listen[0]: 127.0.0.1:9 overlaps 127.0.0.1:9 of service 'a'",
            ),
            ("[daemon]\n", "no [[service]] defined"),
            ("[[service]\n", "invalid TOML"),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nexec = ['/bin/cat']\n",
                "service 'e': handler: give either handler or exec",
            ),
            (
                "[[service]]\nname = 'e'\nexec = ['/bin/cat']\nenv = { NOTIFY_SOCKET = 'x' }\n",
                "service 'e': env.NOTIFY_SOCKET: reserved: sockd never passes it to programs",
            ),
            (
                "[[service]]\nname = 'e'\nexec = ['/bin/cat']\nenv = { WATCHDOG_USEC = '1' }\n",
                "service 'e': env.WATCHDOG_USEC: reserved",
            ),
            (
                "[[service]]\nname = 'e'\nexec = ['/bin/cat']\nenv = { 'A B' = '1' }\n",
                "service 'e': env.A B: not a valid environment variable name",
            ),
            (
                "[[service]]\nname = 'e'\nexec = ['/bin/cat']\nenv = { A = 1 }\n",
                "service 'e': env.A: expected a string, got int",
            ),
            (
                "[[service]]\nname = 'e'\nexec = ['/bin/cat']\nidle_timeout = 5\n",
                "service 'e': idle_timeout: applies to handlers; a program gets max_duration",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nuser = 'root'\n",
                "service 'e': user: applies to exec programs only",
            ),
            (
                "[[service]]\nname = 'e'\nexec = ['/bin/cat']\nuser = 'no-such-user-x'\n",
                "service 'e': user: no such user 'no-such-user-x'",
            ),
            (
                "[[service]]\nname = 'e'\nexec = ['/bin/cat']\ngroup = 'root'\n",
                "service 'e': group: goes with user",
            ),
            (
                "[[service]]\nname = 'e'\nexec = ['/bin/cat', 3]\n",
                "service 'e': exec[1]: expected a string, got int",
            ),
            (
                "[[service]]\nname = 'e'\nexec = ['bin/cat']\n",
                "service 'e': exec[0]: 'bin/cat': give an absolute path, or a name found on PATH",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nburst = 5\n",
                "service 'e': burst: goes with rate",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nper_source_burst = 5\n",
                "service 'e': per_source_burst: goes with per_source_rate",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nsource_prefix_v6 = 129\n",
                "service 'e': source_prefix_v6: must be at most 128",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nper_source = 0\n",
                "service 'e': per_source: must be at least 1",
            ),
            (
                "[[service]]\nname = 'e'\nexec = ['/bin/cat', \"a\\u0000b\"]\n",
                "service 'e': exec[1]: contains a NUL character",
            ),
            (
                "[[service]]\nname = 'e'\nexec = ['/bin/cat']\nenv = { A = \"a\\u0000\" }\n",
                "service 'e': env.A: contains a NUL character",
            ),
            (
                "[[service]]\nname = 'e'\nexec = ['/bin/cat']\nworkers = 2\n",
                "service 'e': workers: applies to handlers; a program runs per connection",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nworkers = 2\nper_source = 2\n",
                "service 'e': per_source: needs fork-per-connection",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nworkers = 2\nmax_children = 2\n",
                "service 'e': max_children: a pooled service serves `workers` connections at once",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nmax_connections_per_child = 2\n",
                "service 'e': max_connections_per_child: goes with workers",
            ),
            (
                (
                    "[daemon]\nmax_children = 4\n"
                    "[[service]]\nname = 'e'\nhandler = 'echo'\nworkers = 4\n"
                ),
                "daemon.max_children: 4 leaves no room beside 4 workers",
            ),
            (
                f"[[service]]\nname = 'e'\nhandler = 'echo'\nrefusal = '{'x' * 513}'\n",
                "service 'e': refusal: at most 512 bytes",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nlisten = ['udp:127.0.0.1:0']\n",
                (
                    "service 'e': handler: UDP echo answers any forged source"
                    " (a reflection attack): set udp_reflection = true to serve it anyway"
                ),
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'chargen'\nlisten = ['udp:127.0.0.1:0']\n",
                "service 'e': handler: UDP chargen answers any forged source",
            ),
            (
                "[[service]]\nname = 'e'\nhandler = 'echo'\nudp_reflection = true\n",
                "service 'e': udp_reflection: goes with a udp: listen address",
            ),
            (
                (
                    "[[service]]\nname = 'e'\nhandler = 'time'\nworkers = 2\n"
                    "listen = ['127.0.0.1:0', 'udp:127.0.0.1:0']\n"
                ),
                "service 'e': workers: not with a built-in over udp: (answered in the forker",
            ),
            (
                (
                    "[[service]]\nname = 'e'\nhandler = 'mod:H'\nworkers = 2\nrate = 5\n"
                    "listen = ['127.0.0.1:0', 'udp:127.0.0.1:0']\n"
                ),
                "service 'e': rate: needs fork-per-connection",
            ),
            (
                (
                    "[[service]]\nname = 'e'\nhandler = 'mod:H'\nworkers = 2\nper_source = 2\n"
                    "listen = ['udp:127.0.0.1:0']\n"
                ),
                "service 'e': per_source: needs fork-per-connection",
            ),
            (
                (
                    "[[service]]\nname = 'e'\nhandler = 'mod:H'\nworkers = 2\nrate = 5\n"
                    "max_connections_per_child = 9\nlisten = ['udp:127.0.0.1:0']\n"
                ),
                "service 'e': max_connections_per_child: not with rate limits",
            ),
            (
                (
                    "[[service]]\nname = 'e'\nhandler = 'time'\nrefusal = 'no'\n"
                    "listen = ['udp:127.0.0.1:0']\n"
                ),
                "service 'e': refusal: never sent to a datagram",
            ),
            (
                (
                    "[[service]]\nname = 'e'\nhandler = 'time'\nproxy_protocol = true\n"
                    "listen = ['udp:127.0.0.1:0']\n"
                ),
                "service 'e': proxy_protocol: not with udp: or unix-dgram: addresses",
            ),
            (
                "[[service]]\nname = 'e'\nexec = ['/bin/cat']\nlisten = ['unix-dgram:/tmp/e.d']\n",
                (
                    "service 'e': exec: not with unix-dgram: addresses (a program per datagram"
                    " serves udp: ones; wait = true gives one the socket itself)"
                ),
            ),
        ],
    )
    def test_errors_name_file_and_key(self, tmp_path: Path, text: str, where: str) -> None:
        """Each class of mistake is one line naming the file, the key and the problem."""
        with pytest.raises(ConfigError) as caught:
            load_text(tmp_path, text)
        message = str(caught.value)
        assert message.startswith(str(tmp_path / "sockd.toml") + ": ")
        assert where in message
        assert "\n" not in message
        assert caught.value.exit_code == 78

    def test_missing_file(self, tmp_path: Path) -> None:
        """An unreadable file is a config error naming it."""
        with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file"):
            config.load(str(tmp_path / "nope.toml"))

    def test_pythonpath_is_relative_to_the_file(self, tmp_path: Path) -> None:
        """Handler modules are found in `pythonpath` directories beside the config."""
        (tmp_path / "handlers").mkdir()
        (tmp_path / "handlers" / "my_handler_mod.py").write_text(
            "import socketserver\nclass H(socketserver.BaseRequestHandler):\n    pass\n"
        )
        loaded = load_text(
            tmp_path,
            "[daemon]\npythonpath = ['handlers']\n"
            "[[service]]\nname = 'h'\nhandler = 'my_handler_mod:H'\nlisten = ['127.0.0.1:0']\n",
        )
        assert loaded.daemon.pythonpath == (str(tmp_path / "handlers"),)


SERVICE = "[[service]]\nname = 'e'\nhandler = 'echo'\nlisten = ['127.0.0.1:0']\n"
PROGRAM = "[[service]]\nname = 'e'\nexec = ['/bin/cat']\nlisten = ['127.0.0.1:0']\n"
HUGE = "1" + "0" * 400  # 400 digits


def rejects(tmp_path: Path, text: str, where: str) -> str:
    """Load `text`, which must fail with one line ending in `where`; return the message."""
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "sockd.toml") + ": ")
    assert message.endswith(where), message
    assert message.isprintable()
    assert len(message) < 1000
    assert caught.value.exit_code == 78
    return message


class TestDatagramPool:
    def test_a_pooled_handler_on_udp_with_rates(self, tmp_path: Path) -> None:
        """Workers with a Python handler on udp: loads, with rates (each worker keeps a share)."""
        (tmp_path / "pooled_dgram_mod.py").write_text(
            "import socketserver\nclass H(socketserver.DatagramRequestHandler):\n    pass\n"
        )
        loaded = load_text(
            tmp_path,
            "[daemon]\npythonpath = ['.']\n[[service]]\nname = 'p'\n"
            "handler = 'pooled_dgram_mod:H'\nworkers = 2\n"
            "rate = 10\nper_source_rate = 1\nlisten = ['udp:127.0.0.1:0']\n",
        )
        (service,) = loaded.services
        assert (service.workers, service.limits.rate, service.limits.per_source_rate) == (2, 10, 1)


class TestRanges:
    """Every value has a documented, finite range (defect 7 of issue 11)."""

    @pytest.mark.parametrize(
        ("text", "where"),
        [
            # The values of the issue: each was accepted, then broke the service.
            (SERVICE + "rate = nan\n", "service 'e': rate: must be a finite number, got nan"),
            (
                "[daemon]\nstop_timeout = nan\n" + SERVICE,
                "daemon.stop_timeout: must be a finite number, got nan",
            ),
            (SERVICE + "idle_timeout = inf\n", "idle_timeout: must be a finite number, got inf"),
            (SERVICE + f"rate = 1\nburst = {HUGE}\n", "burst: must be at most 1000000"),
            (
                SERVICE + "allow = ['fe80::1%eth0']\n",
                "allow[0]: 'fe80::1%eth0': write it without its %zone (clients' addresses have none)",  # noqa: E501
            ),
            (SERVICE + "max_duration = -inf\n", "max_duration: must be a finite number, got -inf"),
            (
                SERVICE + "per_source_rate = 1e400\n",
                "per_source_rate: must be a finite number, got inf",
            ),
            # Upper bounds.
            (
                "[daemon]\nstop_timeout = 2592001\n" + SERVICE,
                "stop_timeout: must be at most 2592000",
            ),
            (f"[daemon]\nmax_children = {HUGE}\n" + SERVICE, "max_children: must be at most 65536"),
            (
                "[daemon]\nrenew_forker_after = 65537\n" + SERVICE,
                "renew_forker_after: must be at most 65536",
            ),
            (
                SERVICE + "max_children = 65537\n",
                "service 'e': max_children: must be at most 65536",
            ),
            (SERVICE + "max_duration = 2592000.5\n", "max_duration: must be at most 2592000"),
            (SERVICE + "idle_timeout = 0.0001\n", "idle_timeout: must be at least 0.001"),
            (SERVICE + "per_source = 65537\n", "per_source: must be at most 65536"),
            (SERVICE + "rate = 1000001\n", "rate: must be at most 1000000"),
            (SERVICE + "rate = 0\n", "rate: must be at least 0.001"),
            (SERVICE + f"per_source_rate = 1\nper_source_burst = -{HUGE}\n", "must be at least 1"),
            (SERVICE + "source_prefix_v4 = 33\n", "source_prefix_v4: must be at most 32"),
            (SERVICE + "workers = 1025\n", "workers: must be at most 1024"),
            (
                SERVICE + f"workers = 1\nmax_connections_per_child = {HUGE}\n",
                "max_connections_per_child: must be at most 1000000000",
            ),
            (
                SERVICE + f"unix_mode = {HUGE}\n",
                "unix_mode: not a file mode from 0 to 0o777 (write it in octal: 0o660)",
            ),
            (
                SERVICE + "unix_mode = -1\n",
                "unix_mode: not a file mode from 0 to 0o777 (write it in octal: 0o660)",
            ),
            # Strings and lists.
            (SERVICE.replace("'e'", "'" + "e" * 65 + "'"), "service[0].name: at most 64 bytes"),
            (
                SERVICE.replace("'e'", "'é'"),
                "service[0].name: 'é' must be 1-64 letters, digits or any of '_.@-'",
            ),
            (
                SERVICE.replace("'echo'", "'" + "x" * 257 + "'"),
                "service 'e': handler: at most 256 bytes",
            ),
            ('[daemon]\nuser = "a\\u0000b"\n' + SERVICE, "daemon.user: contains a NUL character"),
            (f"[daemon]\ngroup = '{'g' * 300}'\n" + SERVICE, "daemon.group: at most 256 bytes"),
            (
                '[daemon]\npythonpath = ["a\\u0000"]\n' + SERVICE,
                "daemon.pythonpath[0]: contains a NUL character",
            ),
            (
                "[daemon]\npythonpath = [" + "'a'," * 65 + "]\n" + SERVICE,
                "daemon.pythonpath: at most 64 entries, got 65",
            ),
            ("[daemon]\n" + SERVICE * 257, "service: at most 256 entries, got 257"),
            (
                SERVICE + "deny = ['1.2.3.4/33']\n",
                "deny[0]: '1.2.3.4/33' is not an address or CIDR network",
            ),
            (
                SERVICE + f"deny = ['{'1' * 100_000}']\n",
                "(100002 characters) is not an address or CIDR network",
            ),
            (
                SERVICE + "allow = ['::1%1/128']\n",
                "allow[0]: '::1%1/128': write it without its %zone (clients' addresses have none)",
            ),
            (
                PROGRAM.replace("'/bin/cat'", f"'/bin/cat', '{'x' * 65_530}'"),
                "service 'e': exec: at most 65536 bytes in all (with env)",
            ),
            (
                PROGRAM.replace("'/bin/cat'", "'/bin/cat'" + ", 'x'" * 256),
                "service 'e': exec: at most 256 entries, got 257",
            ),
            (
                PROGRAM + f"env = {{ A = '{'x' * 40_000}', B = '{'x' * 40_000}' }}\n",
                "service 'e': env: exec and env together: at most 65536 bytes, got 80015",
            ),
            (
                PROGRAM + f"env = {{ {'A' * 129} = '1' }}\n",
                "not a valid environment variable name (at most 128 bytes)",
            ),
            (
                PROGRAM + 'env = { "A\\nB" = "1" }\n',
                "service 'e': env.'A\\nB': not a valid environment variable name (at most 128 bytes)",  # noqa: E501
            ),
            (SERVICE + '"\\u001b[31mred" = 1\n', "service 'e': '\\x1b[31mred': unknown key"),
            (
                SERVICE + 'refusal = "\\u0000\\u00e9' + "x" * 510 + '"\n',
                "service 'e': refusal: at most 512 bytes",
            ),
        ],
    )
    def test_out_of_range(self, tmp_path: Path, text: str, where: str) -> None:
        """A value out of its range is one short, printable line naming the key and the range."""
        rejects(tmp_path, text, where)

    def test_bounds_are_accepted(self, tmp_path: Path) -> None:
        """The documented bounds themselves are valid; a NUL may be part of a refusal."""
        loaded = load_text(
            tmp_path,
            "[daemon]\nstop_timeout = 2592000\nmax_children = 65536\nrenew_forker_after = 65536\n"
            + SERVICE
            + "max_children = 65536\nmax_duration = 0.001\nidle_timeout = 2592000\n"
            "per_source = 65536\nrate = 1000000\nburst = 1000000\nper_source_rate = 0.001\n"
            "per_source_burst = 1000000\nunix_mode = 0o777\n"
            'refusal = "no\\u0000"\n',
        )
        (service,) = loaded.services
        assert loaded.daemon.stop_timeout == config.MAX_SECONDS
        assert service.limits.burst == config.MAX_RATE
        assert service.refusal == "no\0"

    def test_deny_list_is_bounded(self) -> None:
        """The allow and deny lists take at most 100,000 entries (the forker gets them whole)."""
        many = [f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" for n in range(config.MAX_NETWORKS)]
        service = {"name": "e", "handler": "echo", "listen": ["127.0.0.1:0"], "deny": many}
        loaded = config.from_dict({"service": [service]}, "x.toml")
        assert len(loaded.services[0].deny) == config.MAX_NETWORKS
        service["deny"] = [*many, "10.255.255.255"]
        with pytest.raises(
            ConfigError, match=r"^x\.toml: service 'e': deny: at most 100000 entries, got 100001$"
        ):
            config.from_dict({"service": [service]}, "x.toml")


class TestFile:
    """What TOML itself cannot say is a config error too, never a traceback."""

    @pytest.mark.parametrize(
        ("content", "where"),
        [
            (b"a = '\xff'\n", "invalid TOML: not UTF-8 (line 1)"),
            (
                b"[daemon]\nstop_timeout = " + b"1" * 5000 + b"\n",
                "invalid TOML: an integer of more than 4300 digits",
            ),
            (
                b"a = " + b"[" * 100_000 + b"]" * 100_000,
                "invalid TOML: arrays or tables nested too deeply",
            ),
        ],
    )
    def test_unreadable_toml(self, tmp_path: Path, content: bytes, where: str) -> None:
        """Bytes that are not UTF-8, integers Python will not convert, deep nesting: one line."""
        path = tmp_path / "sockd.toml"
        path.write_bytes(content)
        with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: {where}") + "$"):
            config.load(str(path))

    def test_size_is_bounded(self, tmp_path: Path) -> None:
        """A file larger than 32 MiB is refused without reading it all."""
        path = tmp_path / "sockd.toml"
        with path.open("wb") as file:
            file.truncate(config.MAX_FILE_BYTES + 1)  # sparse: no disk used
        with pytest.raises(ConfigError, match=f"^{path}: larger than 33554432 bytes$"):
            config.load(str(path))

    def test_fifo_is_refused_at_once(self, tmp_path: Path) -> None:
        """A FIFO is refused, never waited on: the daemon reads the file at each SIGHUP."""
        path = tmp_path / "sockd.toml"
        os.mkfifo(path)
        with ThreadPoolExecutor(1) as pool:
            loading = pool.submit(config.load, str(path))
            try:
                error = loading.exception(timeout=5)
            except TimeoutError:  # blocked in open(): a writer lets it go
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                pytest.fail("load waited for a writer of a FIFO")
        assert str(error) == f"{path}: cannot read: not a regular file"

    def test_device_is_refused(self, tmp_path: Path) -> None:
        """A link to /dev/zero is refused before a byte is read."""
        path = tmp_path / "sockd.toml"
        path.symlink_to("/dev/zero")
        with pytest.raises(ConfigError, match=f"^{path}: cannot read: not a regular file$"):
            config.load(str(path))

    def test_terminal_is_refused_and_never_taken(self, tmp_path: Path) -> None:
        """A link to a terminal: refused, and the daemon (a session leader) gets no terminal."""
        leader, follower = os.openpty()
        path = tmp_path / "sockd.toml"
        path.symlink_to(os.ttyname(follower))
        os.close(follower)
        pid = os.fork()
        if not pid:  # a session leader with no terminal, as the daemon under systemd
            status = 1
            try:
                os.setsid()
                try:
                    config.load(str(path))
                except ConfigError as exc:
                    status = 2 if str(exc).endswith("not a regular file") else 1
                try:
                    os.close(os.open("/dev/tty", os.O_RDONLY))
                    status = 3  # the terminal became its controlling one
                except OSError:
                    pass
            finally:
                os._exit(status)
        try:
            assert os.waitpid(pid, 0)[1] >> 8 == 2
        finally:
            os.close(leader)

    def test_handler_that_exits_at_import(self, tmp_path: Path) -> None:
        """A handler module that calls sys.exit() as it is imported is a config error."""
        (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(3)\n")
        text = f"[daemon]\npythonpath = ['.']\n{SERVICE}".replace("'echo'", "'exits_at_import:H'")
        rejects(tmp_path, text, "handler: cannot load 'exits_at_import:H': SystemExit: 3")


class TestListen:
    """`check` resolves and checks listen addresses as `run` binds them."""

    @pytest.mark.parametrize(
        ("listen", "where"),
        [
            ("'999.1.1.1:80'", "listen[0]: cannot resolve '999.1.1.1': Name or service not known"),
            (
                "'a..b:80'",
                "listen[0]: bad address 'a..b:80': 'a..b' is neither an IP address nor a host name",
            ),
            ("'" + "a" * 64 + ".example:80'", "is neither an IP address nor a host name"),
            (
                "'127.0.0.1:\u00b2'",
                "listen[0]: bad address '127.0.0.1:²': port '²' is not a number from 0 to 65535",
            ),
            ("'127.0.0.1:1000080'", "port '1000080' is not a number from 0 to 65535"),
            (
                "'[fe80::1%lo]:80'",
                "bad address '[fe80::1%lo]:80': scoped addresses (%zone) are not supported",
            ),
            ("'[::ffff:127.0.0.1]:80'", "write an IPv4 address as such: 127.0.0.1:PORT"),
            (
                "'localhost:7777', '127.0.0.1:7777'",
                "listen[1]: 127.0.0.1:7777 overlaps localhost:7777 of service 'e'",
            ),
            (
                "'127.0.0.1:7777', '0.0.0.0:7777'",
                "listen[1]: 0.0.0.0:7777 overlaps 127.0.0.1:7777 of service 'e'",
            ),
            (
                "'unix:/tmp/x.sock', 'unix:/tmp//x.sock'",
                "listen[1]: unix:/tmp//x.sock overlaps unix:/tmp/x.sock of service 'e'",
            ),
            (
                "'udp:localhost:7777', 'udp:0.0.0.0:7777']\nudp_reflection = true\n#",
                "listen[1]: udp:0.0.0.0:7777 overlaps udp:localhost:7777 of service 'e'",
            ),
            (
                "'unix:/tmp/x.sock', 'unix-dgram:/tmp/x.sock']\nudp_reflection = true\n#",
                "listen[1]: unix-dgram:/tmp/x.sock overlaps unix:/tmp/x.sock of service 'e'",
            ),
            ("'unix:/etc/passwd'", "listen[0]: '/etc/passwd' exists and is not a socket"),
            ('"unix:/tmp/a\\u0000b"', "listen[0]: contains a NUL character"),
        ],
    )
    def test_what_run_would_refuse(self, tmp_path: Path, listen: str, where: str) -> None:
        """A name that does not resolve, addresses that cannot all be bound: refused at load."""
        rejects(tmp_path, SERVICE.replace("'127.0.0.1:0'", listen), where)

    def test_same_error_as_run(self, tmp_path: Path) -> None:
        """The resolving error is the one `sockd run` gives as it binds (sockets.resolve)."""
        address = config.parse_listen("999.1.1.1:80")
        with pytest.raises(ConfigError) as caught:
            sockets.resolve(address, "service 'e': listen[0]")
        message = rejects(
            tmp_path, SERVICE.replace("127.0.0.1:0", "999.1.1.1:80"), str(caught.value)
        )
        assert message == f"{tmp_path / 'sockd.toml'}: {caught.value}"

    def test_not_resolved_at_reload(self) -> None:
        """A reload keeps its listeners: it resolves nothing (no DNS in the daemon's loop)."""
        service = {"name": "e", "handler": "echo", "listen": ["999.1.1.1:80"]}
        config.from_dict({"service": [service]}, "x.toml", import_handlers=False)
        with pytest.raises(ConfigError, match="cannot resolve"):
            config.from_dict({"service": [service]}, "x.toml")

    def test_tcp_and_udp_share_a_port(self, tmp_path: Path) -> None:
        """A TCP and a UDP address on one port are two sockets: both are bound (inetd's usual)."""
        listen = "'0.0.0.0:7777', 'udp:0.0.0.0:7777', '[::]:7777', 'udp:[::]:7777'"
        loaded = load_text(
            tmp_path, SERVICE.replace("'127.0.0.1:0'", listen) + "udp_reflection = true\n"
        )
        assert [str(address) for address in loaded.services[0].listen] == [
            "0.0.0.0:7777",
            "udp:0.0.0.0:7777",
            "[::]:7777",
            "udp:[::]:7777",
        ]

    def test_distinct_addresses_on_one_port(self, tmp_path: Path) -> None:
        """Two specific addresses, or the two families' wildcards, share a port."""
        loaded = load_text(
            tmp_path,
            SERVICE.replace(
                "'127.0.0.1:0'", "'127.0.0.1:7777', '127.0.0.2:7777', '0.0.0.0:7778', '[::]:7778'"
            ),
        )
        assert len(loaded.services[0].listen) == 4


class TestPrograms:
    def test_exec_program_is_found_on_path_and_limits_default(self, tmp_path: Path) -> None:
        """exec[0] without a slash is looked up on PATH now; limits have their defaults."""
        loaded = load_text(
            tmp_path,
            "[[service]]\nname = 'p'\nexec = ['cat', '-u']\nenv = { B = '2', A = '1' }\n",
        )
        (service,) = loaded.services
        assert service.handler is None
        assert service.exec == ("cat", "-u")
        assert service.program is not None
        assert service.program.endswith("/cat")
        assert service.env == (("A", "1"), ("B", "2"))
        assert service.limits == Limits()
        assert (service.limits.source_prefix_v4, service.limits.source_prefix_v6) == (32, 64)

    def test_record_carries_what_the_forker_needs(self, tmp_path: Path) -> None:
        """service_spec: plain values, the program's identity resolved to ids."""
        loaded = load_text(
            tmp_path,
            "[[service]]\nname = 'p'\nexec = ['/bin/cat']\nuser = 'root'\nper_source = 3\n",
        )
        spec = config.service_spec(loaded.services[0])
        assert spec.program == "/bin/cat"
        assert spec.identity is not None
        assert spec.identity[:2] == [0, 0]
        assert 0 in spec.identity[2]
        assert spec.limits.per_source == 3

    def test_effective_config_renders_programs(self, tmp_path: Path) -> None:
        """`sockd check` prints env as an inline table and the limits flat; it parses back."""
        loaded = load_text(
            tmp_path,
            "[[service]]\nname = 'p'\nexec = ['/bin/cat']\nenv = { A = 'x y' }\nrate = 5\n"
            'refusal = "busy\\r\\n"\n',
        )
        effective = tomllib.loads(config.to_toml(loaded))
        (service,) = effective["service"]
        assert service["env"] == {"A": "x y"}
        assert service["rate"] == 5.0
        assert service["exec"] == ["/bin/cat"]
        assert service["refusal"] == "busy\r\n"


WAIT = PROGRAM + "wait = true\n"


class TestWait:
    def test_wait_service_starts_are_bounded_by_default(self, tmp_path: Path) -> None:
        """`wait = true` with exec: its rate and burst (program starts) default to 2 and 20."""
        (service,) = load_text(tmp_path, WAIT).services
        assert service.wait is True
        assert (service.limits.rate, service.limits.burst) == (config.WAIT_RATE, config.WAIT_BURST)
        assert config.service_spec(service).wait is True
        (given,) = load_text(tmp_path, WAIT + "rate = 0.5\nmax_duration = 9\n").services
        assert (given.limits.rate, given.limits.burst, given.max_duration) == (0.5, None, 9)
        (plain,) = load_text(tmp_path, PROGRAM).services
        assert (plain.wait, plain.limits.rate) == (False, None)

    def test_effective_config_round_trips(self, tmp_path: Path) -> None:
        """`sockd check` prints wait = true (and nothing for other services); it loads back."""
        loaded = load_text(tmp_path, WAIT + SERVICE.replace("'e'", "'f'"))
        text = config.to_toml(loaded)
        assert text.count("wait = true") == 1
        assert "wait = false" not in text
        assert load_text(tmp_path, text).services == loaded.services

    @pytest.mark.parametrize(
        ("extra", "where"),
        [
            ("workers = 2", "workers: not with wait = true: the program serves"),
            ("max_children = 2", "max_children: not with wait = true: one program runs per"),
            ("proxy_protocol = true", "proxy_protocol: not with wait = true: sockd reads nothing"),
            ("allow = ['10.0.0.0/8']", "allow: not with wait = true: sockd never sees a wait"),
            ("deny = ['10.0.0.1']", "deny: not with wait = true: sockd never sees a wait"),
            ("refusal = 'no'", "refusal: not with wait = true: sockd refuses no client"),
            ("per_source = 1", "per_source: not with wait = true: sockd never sees a wait"),
            ("per_source_rate = 1", "per_source_rate: not with wait = true: sockd never sees"),
            ("idle_timeout = 1", "idle_timeout: applies to handlers; a program gets max_duration"),
        ],
    )
    def test_what_needs_sockd_to_accept_is_refused(
        self, tmp_path: Path, extra: str, where: str
    ) -> None:
        """A wait service refuses, in one line, each key that needs sockd to accept or read."""
        message = rejects(tmp_path, f"{WAIT}{extra}\n", "")
        assert f"service 'e': {where}" in message

    def test_a_handler_is_refused(self, tmp_path: Path) -> None:
        """A wait service runs a program: with a handler, the one line names `wait`."""
        where = "service 'e': wait: hands the listening socket to a program (exec), not a handler"
        rejects(tmp_path, SERVICE + "wait = true\n", where)

    def test_allowed_keys_with_their_defaults(self, tmp_path: Path) -> None:
        """Empty allow/deny/refusal and proxy_protocol = false (as `check` prints them) are fine."""
        extra = "allow = []\ndeny = []\nrefusal = ''\nproxy_protocol = false\n"
        assert load_text(tmp_path, WAIT + extra).services[0].wait

    def test_on_unix_dgram(self, tmp_path: Path) -> None:
        """A wait program may serve a unix-dgram: socket (it gets the socket itself)."""
        text = WAIT.replace("'127.0.0.1:0'", f"'unix-dgram:{tmp_path}/w.d'")
        (service,) = load_text(tmp_path, text).services
        assert service.wait
        assert [address.kind for address in service.listen] == ["unix-dgram"]


def rlimits(table: str) -> str:
    """Return PROGRAM with `rlimits = { TABLE }`."""
    return f"{PROGRAM}rlimits = {{ {table} }}\n"


class TestRlimits:
    def test_every_resource_and_form_reaches_the_spec(self, tmp_path: Path) -> None:
        """Numbers, K/M/G sizes (any case), "unlimited": by name, in RESOURCES' order."""
        unlimited = next(  # one this process may leave unlimited (the address space, say)
            name
            for name in ("as", "rss")
            if resource.getrlimit(getattr(resource, RESOURCES[name]))[1] == resource.RLIM_INFINITY
        )
        table = (
            'stack = "8M", files = 64, cpu = 10, nproc = 50, data = "512k", core = 0,'
            f' fsize = "1G", {unlimited} = "Unlimited"'
        )
        (service,) = load_text(tmp_path, rlimits(table)).services
        expected = {
            "core": 0,
            "cpu": 10,
            "data": 512 << 10,
            "files": 64,
            "fsize": 1 << 30,
            "nproc": 50,
            "stack": 8 << 20,
            unlimited: None,
        }
        assert service.rlimits == tuple(
            (name, expected[name]) for name in RESOURCES if name in expected
        )
        assert config.service_spec(service).rlimits == service.rlimits
        (plain,) = load_text(tmp_path, PROGRAM).services
        assert plain.rlimits == config.service_spec(plain).rlimits == ()

    @pytest.mark.parametrize(
        ("table", "where"),
        [
            ("nice = 1", "rlimits.nice: not a resource: as, core, cpu, data, files, fsize, nproc"),
            ("files = -1", 'rlimits.files: must be at least 4 (or "unlimited"), got -1'),
            ("cpu = 0", 'rlimits.cpu: must be at least 1 (or "unlimited"), got 0'),
            (f"as = {HUGE}", 'rlimits.as: must be at most 9223372036854775807 (or "unlimited")'),
            ('files = "64K"', "rlimits.files: '64K': files is a count, not bytes: no K, M or G"),
            ('cpu = "1M"', "rlimits.cpu: '1M': cpu is seconds, not bytes: no K, M or G"),
            ('as = "lots"', "rlimits.as: 'lots' is neither a number, with K, M or G, nor"),
            ('as = "1T"', "rlimits.as: '1T' is neither a number, with K, M or G, nor"),
            ('as = "-1"', "rlimits.as: '-1' is neither a number, with K, M or G, nor"),
            ('as = ""', "rlimits.as: '' is neither a number, with K, M or G, nor"),
            ('nproc = "9M"', "rlimits.nproc: '9M': nproc is a count, not bytes"),
            ("as = 1.5", "rlimits.as: expected an integer or a string, got float"),
            ("as = true", "rlimits.as: expected an integer or a string, got bool"),
            ("as = [1]", "rlimits.as: expected an integer or a string, got list"),
        ],
    )
    def test_bad_values_are_one_line_naming_service_and_key(
        self, tmp_path: Path, table: str, where: str
    ) -> None:
        """Each bad key or value: one line, FILE: service 'e': rlimits.KEY: the problem."""
        message = rejects(tmp_path, rlimits(table), "")
        assert f"service 'e': {where}" in message

    def test_not_a_table_nor_for_a_handler(self, tmp_path: Path) -> None:
        """A table, and a program's only: a handler runs in sockd's own child."""
        rejects(
            tmp_path, PROGRAM + "rlimits = 5\n", "service 'e': rlimits: expected a table, got int"
        )
        where = "service 'e': rlimits: applies to exec programs only"
        rejects(tmp_path, SERVICE + "rlimits = { files = 64 }\n", where)

    def test_above_sockds_hard_limit_is_refused(self, tmp_path: Path) -> None:
        """A value sockd could not raise its hard limit to: refused, naming both."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        where = (
            f"service 'e': rlimits.files: {hard + 1} is above sockd's hard limit of {hard}"
            " (RLIMIT_NOFILE); sockd cannot raise it: lower the value, or raise the limit of"
            " sockd's service"
        )
        rejects(tmp_path, rlimits(f"files = {hard + 1}"), where)
        (service,) = load_text(tmp_path, rlimits(f"files = {hard}")).services
        assert service.rlimits == (("files", hard),)
        rejects(tmp_path, rlimits('files = "unlimited"'), "")

    def test_a_wait_service_and_the_effective_config(self, tmp_path: Path) -> None:
        """A wait service may have them; `sockd check` prints them as a table that loads back."""
        loaded = load_text(tmp_path, WAIT + 'rlimits = { files = 64, as = "1M" }\n')
        text = config.to_toml(loaded)
        assert "rlimits = { as = 1048576, files = 64 }" in text
        assert load_text(tmp_path, text).services == loaded.services
        assert "rlimits" not in config.to_toml(load_text(tmp_path, PROGRAM))


class TestParseListen:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("127.0.0.1:80", config.ListenAddress("tcp", "127.0.0.1", 80)),
            ("[::]:8080", config.ListenAddress("tcp", "::", 8080)),
            ("localhost:0", config.ListenAddress("tcp", "localhost", 0)),
            ("unix:/run/x.sock", config.ListenAddress("unix", path="/run/x.sock")),
            ("udp:127.0.0.1:37", config.ListenAddress("udp", "127.0.0.1", 37)),
            ("udp:[::1]:7", config.ListenAddress("udp", "::1", 7)),
            ("udp:localhost:0", config.ListenAddress("udp", "localhost", 0)),
            ("unix-dgram:/run/d.sock", config.ListenAddress("unix-dgram", path="/run/d.sock")),
        ],
    )
    def test_valid(self, text: str, expected: config.ListenAddress) -> None:
        """Each accepted form parses, and prints back as written."""
        assert config.parse_listen(text) == expected
        assert str(expected) == text

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("127.0.0.1", "expected HOST:PORT"),
            ("127.0.0.1:65536", "not a number from 0 to 65535"),
            ("::1:80", "write an IPv6 address in brackets"),
            ("[::1:80", "closing ']'"),
            ("[1.2.3.4]:80", "not an IPv6 address"),
            ("unix:relative.sock", "must be absolute"),
            ("bad_host!:80", "neither an IP address nor a host name"),
            ("udp:127.0.0.1", "expected udp:HOST:PORT or udp:"),
            ("udp:::1:7", "write an IPv6 address in brackets"),
            ("unix-dgram:d.sock", "must be absolute"),
        ],
    )
    def test_invalid(self, text: str, problem: str) -> None:
        """Malformed addresses say what is wrong."""
        with pytest.raises(ValueError, match=problem):
            config.parse_listen(text)


class TestEffectiveConfig:
    def test_round_trip(self, tmp_path: Path) -> None:
        """The effective config printed by `sockd check` is TOML that loads to the same config."""
        loaded = load_text(tmp_path, GOOD)
        text = config.to_toml(loaded)
        tomllib.loads(text)
        again = load_text(tmp_path, text)
        assert again.services == loaded.services
        assert again.daemon == loaded.daemon

    def test_one_service(self) -> None:
        """`--handler` builds a one-service config; its errors name the command line."""
        built = config.one_service("echo", ["127.0.0.1:0"], "echo")
        assert built.path is None
        assert [service.name for service in built.services] == ["echo"]
        with pytest.raises(ConfigError, match=r"^command line: service 'x': listen"):
            config.one_service("echo", ["bogus"], "x")
