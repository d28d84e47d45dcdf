"""Tests of sockd.supervisor.xinetdconf: xinetd's blocks as services, on Debian's own files."""

from __future__ import annotations

import resource
from typing import TYPE_CHECKING

import pytest
from importing import check, commented, debian_xinetd, served, xinetd

from sockd.errors import ConfigError
from sockd.supervisor import importer, xinetdconf

if TYPE_CHECKING:
    from pathlib import Path

    from sockd.supervisor.importer import Result

PROGRAM = "socket_type = stream\nwait = no\nuser = nobody\nserver = /bin/cat\n"


@pytest.fixture(autouse=True)
def no_wrapper_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TCP wrappers' files of the tests' own: none, unless a test writes one."""
    paths = (str(tmp_path / "hosts.allow"), str(tmp_path / "hosts.deny"))
    monkeypatch.setattr(importer, "HOSTS_ACCESS", paths)


def one(tmp_path: Path, attributes: str, name: str = "echo") -> Result:
    """Convert one service block with these attribute lines."""
    return xinetd(tmp_path / "xinetd.conf", f"service {name}\n{{\n{attributes}}}\n")


class TestDebianFiles:
    def test_default_tree_is_all_disabled(self, tmp_path: Path) -> None:
        """Debian's xinetd.conf and xinetd.d: every service converts, and every one is disabled."""
        result = xinetd(debian_xinetd(tmp_path))
        assert served(result) == []
        names = [service["name"] for service in commented(result)]
        assert names == [
            "chargen-stream", "chargen-dgram", "chargen-dgram-2",
            "daytime-stream", "daytime-dgram", "daytime-dgram-2",
            "discard-stream", "discard-dgram", "discard-dgram-2",
            "echo-stream", "echo-dgram", "echo-dgram-2",
            "servers", "services",
            "time-stream", "time-dgram", "time-dgram-2",
        ]  # fmt: skip
        assert result.problems == []  # what a disabled service lacks costs nothing
        assert result.text.count("# - disable = yes: uncomment to serve it") == 17

    def test_enabled_internal_services(self, tmp_path: Path) -> None:
        """With echo and time enabled in Debian's files: built-ins on IPv4 (xinetd's default)."""
        conf = debian_xinetd(tmp_path)
        for name in ("echo", "time"):
            path = conf.parent / "xinetd.d" / name
            path.write_text(path.read_text().replace("disable\t\t= yes", "disable\t\t= no", 1))
        result = xinetd(conf)
        assert served(result) == [
            {"name": "echo-stream", "handler": "echo", "listen": ["0.0.0.0:7"]},
            {"name": "time-stream", "handler": "time", "listen": ["0.0.0.0:37"]},
        ]
        assert [service.name for service in check(tmp_path, result).services] == [
            "echo-stream",
            "time-stream",
        ]

    def test_enabled_udp_internal_services(self, tmp_path: Path) -> None:
        """Debian's time-dgram (wait = yes, internal) is a UDP built-in: the forker answers it."""
        conf = debian_xinetd(tmp_path)
        path = conf.parent / "xinetd.d" / "time"
        path.write_text(path.read_text().replace("disable\t\t= yes", "disable\t\t= no"))
        result = xinetd(conf)
        assert served(result) == [
            {"name": "time-stream", "handler": "time", "listen": ["0.0.0.0:37"]},
            {"name": "time-dgram", "handler": "time", "listen": ["udp:0.0.0.0:37"]},
        ]
        assert result.problems == []
        check(tmp_path, result)

    def test_udp_nowait_program(self, tmp_path: Path) -> None:
        """A dgram udp program with wait = no is served per datagram."""
        text = PROGRAM.replace("wait = no\n", "") + "socket_type = dgram\nwait = no\n"
        (service,) = served(one(tmp_path, text))
        assert service["listen"] == ["udp:0.0.0.0:7"]

    def test_internal_services_without_builtin(self, tmp_path: Path) -> None:
        """The `servers` service of xinetd has no built-in in sockd: said, on stderr."""
        conf = debian_xinetd(tmp_path)
        path = conf.parent / "xinetd.d" / "servers"
        path.write_text(path.read_text().replace("disable\t\t= yes", "disable\t\t= no"))
        result = xinetd(conf)
        assert result.problems == [
            f"{path}:4: servers: internal service 'servers' has no sockd built-in"
        ]


class TestFiles:
    def test_includedir_skips_and_orders(self, tmp_path: Path) -> None:
        """An includedir reads files in C order, skipping names with a dot or ending in '~'."""
        directory = tmp_path / "d"
        directory.mkdir()
        for port, name in enumerate(("b", "B", "a.conf", "c~", "a"), 7000):
            text = f"service x{port}\n{{\n{PROGRAM}port = {port}\n}}\n"
            (directory / name).write_text(text)
        result = xinetd(tmp_path / "xinetd.conf", f"includedir {directory}\n")
        assert [service["name"] for service in served(result)] == ["x7001", "x7004", "x7000"]

    def test_include(self, tmp_path: Path) -> None:
        """An include reads one more file, as if its blocks were here."""
        (tmp_path / "more").write_text(f"service echo\n{{\n{PROGRAM}}}\n")
        result = xinetd(tmp_path / "xinetd.conf", f"include {tmp_path}/more\n")
        assert served(result)[0]["exec"] == ["/bin/cat"]

    def test_brace_on_the_service_line(self, tmp_path: Path) -> None:
        """`service NAME {` on one line is read as well."""
        result = xinetd(tmp_path / "xinetd.conf", f"service echo {{\n{PROGRAM}}}\n")
        assert served(result)[0]["listen"] == ["0.0.0.0:7"]

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("service echo\nsocket_type = stream\n", ":2: expected '{' after service"),
            ("service echo\n{\nwait = no\n", ":1: service echo: no closing '}'"),
            (
                "service echo\n{\nwait no\n}\n",
                ":3: expected ATTRIBUTE = VALUE... (or '}'), got 'wait no'",
            ),
            ("wait = no\n", ":1: expected service NAME, defaults, include FILE or includedir DIR"),
            ("includedir /nonexistent\n", ":1: includedir /nonexistent: cannot read: No such file"),
            ("include /nonexistent\n", "/nonexistent: cannot read: No such file"),
        ],
    )
    def test_parse_errors(self, tmp_path: Path, text: str, problem: str) -> None:
        """A file that cannot be parsed is one error naming FILE:LINE."""
        (tmp_path / "xinetd.conf").write_text(text)
        with pytest.raises(ConfigError) as caught:
            xinetdconf.read(str(tmp_path / "xinetd.conf"))
        assert problem in str(caught.value)
        assert "\n" not in str(caught.value)

    def test_latin1_comment(self, tmp_path: Path) -> None:
        """A comment not in UTF-8 (an old Latin-1 one) is a comment: the file converts."""
        path = tmp_path / "xinetd.conf"
        path.write_bytes(
            b"# configuraci\xf3n\nservice echo\n{\n# \xe9\n" + PROGRAM.encode() + b"}\n"
        )
        result = importer.convert(xinetdconf.read(str(path)), str(path))
        assert [service["name"] for service in served(result)] == ["echo"]

    def test_include_depth(self, tmp_path: Path) -> None:
        """A chain of 600 files including the next: one line, not a RecursionError."""
        for index in range(600):
            (tmp_path / f"f{index}").write_text(f"include {tmp_path}/f{index + 1}\n")
        deepest = f"{tmp_path}/f{xinetdconf.MAX_DEPTH}"
        with pytest.raises(ConfigError, match=f"^{deepest}: included more than 32 files deep$"):
            xinetdconf.read(f"{tmp_path}/f0")

    def test_include_loop(self, tmp_path: Path) -> None:
        """A file that includes itself ends, with an error."""
        path = tmp_path / "xinetd.conf"
        with pytest.raises(
            ConfigError, match=r"xinetd.conf: included by itself \(an include loop\)"
        ):
            xinetd(path, f"include {path}\n")


class TestAttributes:
    def test_program(self, tmp_path: Path) -> None:
        """The server and server_args are exec; user, group and env go along."""
        result = one(
            tmp_path, f"{PROGRAM}group = nogroup\nserver_args = -u -\nenv = LANG=C.UTF-8 A=b\n"
        )
        assert served(result)[0] == {
            "name": "echo",
            "exec": ["/bin/cat", "-u", "-"],
            "listen": ["0.0.0.0:7"],
            "user": "nobody",
            "group": "nogroup",
            "env": {"A": "b", "LANG": "C.UTF-8"},
        }
        assert result.problems == []
        check(tmp_path, result)

    def test_numeric_user(self, tmp_path: Path) -> None:
        """A numeric user becomes its name."""
        result = one(tmp_path, PROGRAM.replace("nobody", "65534"))
        assert served(result)[0]["user"] == "nobody"

    def test_nameinargs_and_tcpd(self, tmp_path: Path) -> None:
        """With NAMEINARGS server_args starts with argv[0]; tcpd in server is dropped for it."""
        text = (
            PROGRAM.replace("/bin/cat", "/usr/sbin/tcpd")
            + "flags = NAMEINARGS\nserver_args = /bin/cat -u\n"
        )
        assert served(one(tmp_path, text))[0]["exec"] == ["/bin/cat", "-u"]

    def test_libwrap_rules(self, tmp_path: Path) -> None:
        """Debian's xinetd applies hosts.allow and hosts.deny: rules are lost, unless NOLIBWRAP."""
        (tmp_path / "hosts.allow").write_text("in.fingerd: 10.0.0.0/8\n")
        result = one(tmp_path, PROGRAM)
        rules = f"the rules in {tmp_path}/hosts.allow no longer apply; write them as allow/deny"
        where = f"{tmp_path}/xinetd.conf:1"
        assert result.problems == [
            f"{where}: echo: libwrap (Debian's xinetd checks TCP wrappers' rules): {rules}"
        ]
        assert one(tmp_path, f"{PROGRAM}flags = NOLIBWRAP\n").problems == []

    @pytest.mark.parametrize(
        ("attributes", "listen"),
        [
            ("port = 7007\n", ["0.0.0.0:7007"]),
            ("bind = 127.0.0.1\n", ["127.0.0.1:7"]),
            ("interface = 127.0.0.1\n", ["127.0.0.1:7"]),
            ("bind = ::1\n", ["[::1]:7"]),
            ("flags = IPv6\n", ["0.0.0.0:7", "[::]:7"]),
            ("flags = IPv4\n", ["0.0.0.0:7"]),
        ],
    )
    def test_listen(self, tmp_path: Path, attributes: str, listen: list[str]) -> None:
        """port, bind (interface) and the IPv4/IPv6 flags make `listen`."""
        assert served(one(tmp_path, PROGRAM + attributes))[0]["listen"] == listen

    def test_unlisted_without_port(self, tmp_path: Path) -> None:
        """A name /etc/services does not know, without port, is a service kept as a comment."""
        result = one(tmp_path, PROGRAM + "type = UNLISTED\n", name="mine")
        assert result.problems == [
            f"{tmp_path}/xinetd.conf:1: mine: service 'mine' is not in /etc/services for tcp"
        ]

    @pytest.mark.parametrize(
        ("attributes", "allow", "deny"),
        [
            (
                "only_from = 127.0.0.1 10.0.0.0 192.168.{1,2}\n",
                ["127.0.0.1/32", "10.0.0.0/8", "192.168.1.0/24", "192.168.2.0/24"],
                None,
            ),
            (
                "only_from = 10.1.2.0/24 2001:db8::/32 ::1\n",
                ["10.1.2.0/24", "2001:db8::/32", "::1/128"],
                None,
            ),
            ("only_from = 0.0.0.0\n", None, None),
            ("only_from =\n", None, ["0.0.0.0/0", "::/0"]),
            ("no_access = 192.0.2.7\n", None, ["192.0.2.7/32"]),
            ("only_from = 10.0.0.0\nno_access = 10.0.0.7\n", ["10.0.0.0/8"], ["10.0.0.7/32"]),
            ("only_from = localhost\n", ["127.0.0.1/32", "::1/128"], None),
        ],
    )  # fmt: skip
    def test_access(
        self, tmp_path: Path, attributes: str, allow: list[str] | None, deny: list[str] | None
    ) -> None:
        """only_from and no_access in xinetd's forms become allow and deny."""
        result = one(tmp_path, PROGRAM + attributes)
        service = served(result)[0]
        if allow == ["127.0.0.1/32", "::1/128"]:  # localhost: what this host resolves it to
            assert set(service["allow"]) <= set(allow)
        else:
            assert service.get("allow") == allow
        assert service.get("deny") == deny
        assert result.problems == []
        check(tmp_path, result)

    def test_nested_factorized_address(self, tmp_path: Path) -> None:
        """Braces in braces are not xinetd's form: one lost part, not a RecursionError."""
        host = "10." + "{1." * 2000 + "1" + "}" * 2000
        result = one(tmp_path, f"{PROGRAM}only_from = {host}\n")
        assert len(served(result)) == 1
        (problem,) = result.problems  # one line, shortened
        assert problem.startswith(f"{tmp_path}/xinetd.conf:1: echo: only_from 10.{{1.{{1.")
        assert "# - no equivalent: only_from 10.{1." in result.text

    @pytest.mark.parametrize(
        ("attributes", "problem"),
        [
            ("only_from = .example.com\n", "only_from .example.com: a domain: sockd matches"),
            ("no_access = no-such-host.invalid\n", "no_access no-such-host.invalid: a name that"),
            ("only_from = 10.0.0.7\nno_access = 10.0.0.0\n", "only_from 10.0.0.7/32 inside"),
            ("passenv = TZ\n", "passenv = TZ: a program starts from a clean environment"),
            ("rlimit_as = lots\n", "rlimit_as = lots: neither a number (with K or M) nor"),
            ("rlimit_cpu = 2M\n", "rlimit_cpu = 2M: neither a number nor UNLIMITED"),
            ("rlimit_files = 1 2\n", "rlimit_files = 1 2: neither a number (with K or M) nor"),
            ("rlimit_nproc = 9\n", "rlimit_nproc = 9: not an xinetd attribute sockd knows"),
            ("banner = /etc/issue\n", "banner = /etc/issue: sockd sends no banner"),
            ("access_times = 2:00-9:00\n", "access_times = 2:00-9:00: sockd serves at all hours"),
            ("nice = 10\n", "nice = 10: sockd does not change a program's priority"),
            ("flags = KEEPALIVE\n", "flags KEEPALIVE: sockd has no such option"),
            ("frobnicate = yes\n", "frobnicate = yes: not an xinetd attribute sockd knows"),
            ("cps = 10\n", "cps = 10: expected two numbers"),
            ("instances = lots\n", "instances = lots: not a number from 1 to 65536"),
            ("env = NOEQUALS\n", "env 'NOEQUALS': not NAME=VALUE"),
        ],
    )  # fmt: skip
    def test_lost_parts(self, tmp_path: Path, attributes: str, problem: str) -> None:
        """What has no equivalent: a comment, a line naming FILE:LINE; the service is served."""
        result = one(tmp_path, PROGRAM + attributes)
        assert len(served(result)) == 1
        assert len(result.problems) == 1
        assert result.problems[0].startswith(f"{tmp_path}/xinetd.conf:1: echo: {problem}")
        assert f"# - no equivalent: {problem}" in result.text
        check(tmp_path, result)

    @pytest.mark.parametrize(
        ("attributes", "problem"),
        [
            (
                "socket_type = raw\nprotocol = udp\n",
                "raw udp: sockd serves stream tcp and dgram udp services",
            ),
            ("type = RPC\n", "type = RPC: sockd serves no RPC services"),
            ("redirect = 10.0.0.1 23\n", "redirect = 10.0.0.1 23: sockd does not forward"),
        ],
    )  # fmt: skip
    def test_not_served(self, tmp_path: Path, attributes: str, problem: str) -> None:
        """A service sockd cannot serve yet stays a comment, said on stderr."""
        text = PROGRAM.replace("wait = no\n", "") + attributes
        if "redirect" in attributes:
            text = text.replace("server = /bin/cat\n", "")
        result = one(tmp_path, text)
        assert served(result) == []
        assert len(result.problems) == 1
        assert result.problems[0].startswith(f"{tmp_path}/xinetd.conf:1: echo: {problem}")

    def test_rlimits(self, tmp_path: Path) -> None:
        """rlimit_* are the program's rlimits: sizes with K or M as written, UNLIMITED, numbers."""
        attributes = (
            "rlimit_as = UNLIMITED\nrlimit_cpu = 20\nrlimit_data = 64k\nrlimit_files = 1K\n"
            "rlimit_rss = 512M\nrlimit_stack = 8388608\n"
        )
        result = one(tmp_path, PROGRAM + attributes)
        (service,) = served(result)
        assert service["rlimits"] == {
            "as": "unlimited",
            "cpu": 20,
            "data": "64K",
            "files": 1024,  # xinetd takes K and M for any limit; sockd for sizes only
            "rss": "512M",
            "stack": 8388608,
        }
        assert result.problems == []
        (loaded,) = check(tmp_path, result).services
        assert loaded.rlimits == (
            ("as", None),
            ("cpu", 20),
            ("data", 64 << 10),
            ("files", 1024),
            ("rss", 512 << 20),
            ("stack", 8388608),
        )

    def test_rlimits_sockd_cannot_set(self, tmp_path: Path) -> None:
        """An internal service's limit, one above sockd's hard limit, a 0: not carried over."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        result = one(tmp_path, f"{PROGRAM}rlimit_files = {hard + 1}\nrlimit_cpu = 0\n")
        assert "rlimits" not in served(result)[0]
        (problem,) = result.problems
        above = f"rlimit_files = {hard + 1}: {hard + 1} is above sockd's hard limit of {hard}"
        assert problem.startswith(f"{tmp_path}/xinetd.conf:1: echo: {above} (RLIMIT_NOFILE)")
        assert "# - rlimit_cpu = 0: xinetd sets no limit of 0: nor does sockd" in result.text
        check(tmp_path, result)
        internal = one(tmp_path, "type = INTERNAL\nsocket_type = stream\nrlimit_as = 8M\n")
        assert "rlimits" not in served(internal)[0]
        assert internal.problems[0].endswith(
            "echo: rlimit_as = 8M: sockd sets resource limits on programs (exec) only"
        )
        check(tmp_path, internal)

    def test_limits(self, tmp_path: Path) -> None:
        """The instances, per_source and cps are max_children, per_source, rate and burst."""
        result = one(tmp_path, f"{PROGRAM}instances = 30\nper_source = 5\ncps = 50 10\n")
        service = served(result)[0]
        assert (service["max_children"], service["per_source"]) == (30, 5)
        assert (service["rate"], service["burst"]) == (50, 50)
        assert "xinetd turns the service off for 10 s past 50 connections a second" in result.text
        assert result.problems == []

    def test_wait(self, tmp_path: Path) -> None:
        """A `wait = yes` block is a wait service: cps bounds its starts; instances goes."""
        text = PROGRAM.replace("wait = no", "wait = yes")
        text += "instances = 30\nper_source = 5\ncps = 50 10\nonly_from = 10.0.0.0\n"
        result = one(tmp_path, text)
        (service,) = served(result)
        assert service["wait"] is True
        assert (service["rate"], service["burst"]) == (50, 50)
        assert "max_children" not in service
        assert "per_source" not in service
        assert "allow" not in service
        assert (
            "# - instances = 30: dropped: a wait service runs one program at a time" in result.text
        )
        assert (
            "# - per_source = 5: dropped: sockd never sees a wait service's clients" in result.text
        )
        assert "past 50 starts a second" in result.text
        assert len(result.problems) == 1
        assert (
            "only_from = 10.0.0.0: sockd never sees a wait service's clients"
            in (result.problems[0])
        )
        assert check(tmp_path, result).services[0].wait

    def test_dgram_wait(self, tmp_path: Path) -> None:
        """Debian's tftp block (dgram, udp, wait = yes) is a wait service on a UDP socket."""
        text = "socket_type = dgram\nprotocol = udp\nwait = yes\nuser = root\n"
        text += "server = /bin/true\nserver_args = -s /srv/tftp\n"
        result = one(tmp_path, text, name="tftp")
        (service,) = served(result)
        assert (service["listen"], service["wait"]) == (["udp:0.0.0.0:69"], True)
        assert service["exec"] == ["/bin/true", "-s", "/srv/tftp"]
        check(tmp_path, result)

    def test_unlimited(self, tmp_path: Path) -> None:
        """An UNLIMITED instances sets no cap."""
        assert "max_children" not in served(one(tmp_path, f"{PROGRAM}instances = UNLIMITED\n"))[0]

    def test_logs_are_comments(self, tmp_path: Path) -> None:
        """The log_type and log_on_* are comments only: sockd logs its own way."""
        result = one(tmp_path, f"{PROGRAM}log_on_success += HOST DURATION\n")
        assert "# - log_on_success = HOST DURATION: sockd logs each connection" in result.text
        assert result.problems == []


class TestDefaults:
    def test_inherited_and_added(self, tmp_path: Path) -> None:
        """A service inherits defaults' attributes; += adds to a list, = replaces, -= removes."""
        text = (
            "defaults\n{\ninstances = 10\nonly_from = 10.0.0.0\nonly_from = 192.0.2.1\n}\n"
            f"service echo\n{{\n{PROGRAM}only_from += 127.0.0.1\nonly_from -= 192.0.2.1\n}}\n"
            f"service discard\n{{\n{PROGRAM}only_from = 127.0.0.2\ninstances = 3\n}}\n"
        )
        echo, discard = served(xinetd(tmp_path / "xinetd.conf", text))
        assert (echo["max_children"], echo["allow"]) == (10, ["10.0.0.0/8", "127.0.0.1/32"])
        assert (discard["max_children"], discard["allow"]) == (3, ["127.0.0.2/32"])

    def test_disabled_and_enabled(self, tmp_path: Path) -> None:
        """The defaults' disabled turns services off by id; enabled turns off the rest."""
        blocks = "".join(
            f"service {name}\n{{\n{PROGRAM}}}\n" for name in ("echo", "discard", "time")
        )
        result = xinetd(tmp_path / "xinetd.conf", f"defaults\n{{\ndisabled = echo\n}}\n{blocks}")
        assert [service["name"] for service in served(result)] == ["discard", "time"]
        result = xinetd(tmp_path / "xinetd.conf", f"defaults\n{{\nenabled = time\n}}\n{blocks}")
        assert [service["name"] for service in served(result)] == ["time"]
        assert "# - not listed in defaults' enabled: uncomment to serve it" in result.text
