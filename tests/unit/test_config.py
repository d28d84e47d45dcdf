"""Tests of sockd.config: TOML loading, validation and the effective config."""

from __future__ import annotations

import ipaddress
import tomllib
from typing import TYPE_CHECKING

import pytest

from sockd import config
from sockd.errors import ConfigError

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
                "service 'e': unix_mode: 0o1411 is not a file mode",
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
                "service 'b': listen: 127.0.0.1:9 is also in 'a'",
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
        assert service.limits == config.Limits()
        assert (service.limits.source_prefix_v4, service.limits.source_prefix_v6) == (32, 64)

    def test_record_carries_what_the_forker_needs(self, tmp_path: Path) -> None:
        """service_record: plain values, the program's identity resolved to ids."""
        loaded = load_text(
            tmp_path,
            "[[service]]\nname = 'p'\nexec = ['/bin/cat']\nuser = 'root'\nper_source = 3\n",
        )
        record = config.service_record(loaded.services[0])
        assert record["program"] == "/bin/cat"
        assert record["identity"][:2] == [0, 0]
        assert 0 in record["identity"][2]
        assert record["limits"]["per_source"] == 3

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


class TestParseListen:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("127.0.0.1:80", config.ListenAddress("tcp", "127.0.0.1", 80)),
            ("[::]:8080", config.ListenAddress("tcp", "::", 8080)),
            ("localhost:0", config.ListenAddress("tcp", "localhost", 0)),
            ("unix:/run/x.sock", config.ListenAddress("unix", path="/run/x.sock")),
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
