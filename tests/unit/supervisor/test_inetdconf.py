"""Tests of sockd.supervisor.inetdconf: inetd.conf lines as services, on Debian's own files."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import pytest
from importing import DATA, check, commented, inetd, served

from sockd.errors import ConfigError
from sockd.supervisor import importer, inetdconf

if TYPE_CHECKING:
    from pathlib import Path

BOTH = ["0.0.0.0:7", "[::]:7"]


@pytest.fixture(autouse=True)
def no_wrapper_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TCP wrappers' files of the tests' own: none, unless a test writes one."""
    paths = (str(tmp_path / "hosts.allow"), str(tmp_path / "hosts.deny"))
    monkeypatch.setattr(importer, "HOSTS_ACCESS", paths)


class TestDebianFiles:
    def test_openbsd_inetd_default_serves_nothing(self) -> None:
        """Debian's default inetd.conf has only comments: no service, not even the internal ones."""
        assert inetdconf.read(str(DATA / "openbsd-inetd" / "inetd.conf")) == []

    def test_default_with_internal_lines_uncommented(self, tmp_path: Path) -> None:
        """The #echo... lines of Debian's default, uncommented, become built-ins (UDP too)."""
        text = (DATA / "openbsd-inetd" / "inetd.conf").read_text()
        for name in ("echo", "discard", "daytime", "time", "chargen"):
            text = text.replace(f"\n#{name}\t", f"\n{name}\t")
        result = inetd(tmp_path / "inetd.conf", text)
        tables = {service["name"]: service for service in served(result)}
        assert list(tables) == ["echo", "discard", "discard-udp", "daytime", "time", "chargen"]
        assert tables["echo"] == {"name": "echo", "handler": "echo", "listen": BOTH}
        assert tables["time"]["listen"] == ["0.0.0.0:37", "[::]:37"]
        # Written `wait`, as Debian's files write internal dgram lines: answered by the forker.
        assert tables["discard-udp"] == {
            "name": "discard-udp",
            "handler": "discard",
            "listen": ["udp:0.0.0.0:9", "udp:[::]:9"],
        }
        assert commented(result) == []
        assert result.problems == []
        assert [service.name for service in check(tmp_path, result).services] == list(tables)

    def test_update_inetd_lines(self, tmp_path: Path) -> None:
        """The lines of fingerd, talkd, micro-httpd: tcpd dropped, user.group split, talk waits."""
        # Their programs moved to a directory that does not exist: none is installed there
        # (in.talkd is here: scripts/setup --tests installs it for tests/integration/test_wait.py).
        sbin = f"{tmp_path}/sbin"
        path = tmp_path / "inetd.conf"
        text = (DATA / "update-inetd" / "inetd.conf").read_text()
        path.write_text(text.replace("/usr/sbin/", f"{sbin}/"))
        result = inetd(path)
        assert served(result) == []
        www, talk, ntalk, finger = commented(result)
        assert www == {
            "name": "www",
            "exec": [f"{sbin}/micro-httpd", "/var/www/html"],
            "listen": ["0.0.0.0:80", "[::]:80"],
            "user": "nobody",
            "group": "www-data",
        }
        assert talk["exec"] == [f"{sbin}/in.talkd"]
        assert (talk["user"], talk["group"]) == ("nobody", "tty")
        assert talk["listen"] == ["udp:0.0.0.0:517", "udp:[::]:517"]
        assert talk["wait"] is True  # in.talkd receives on the socket itself
        assert ntalk["name"] == "ntalk"
        assert finger == {
            "name": "finger",
            "exec": [f"{sbin}/in.fingerd"],
            "listen": ["0.0.0.0:79", "[::]:79"],
            "user": "nobody",
        }
        assert "# - disabled by update-inetd (#<off>#): uncomment to serve it" in result.text
        assert result.problems == [
            (
                f"{path}:28: www: kept as a comment: service 'www': exec[0]:"
                f" {sbin}/micro-httpd: no such program"
            ),
            (
                f"{path}:31: talk: kept as a comment: service 'talk': exec[0]:"
                f" {sbin}/in.talkd: no such program"
            ),
            (
                f"{path}:37: finger: kept as a comment: service 'finger': exec[0]:"
                f" {sbin}/in.fingerd: no such program"
            ),
        ]

    def test_update_inetd_lines_with_the_programs_there(self, tmp_path: Path) -> None:
        """With programs that exist, fingerd's and micro-httpd's lines are served and checked."""
        text = (DATA / "update-inetd" / "inetd.conf").read_text()
        text = text.replace("/usr/sbin/in.fingerd", "/bin/cat")
        text = text.replace("/usr/sbin/micro-httpd", "/bin/ls")
        text = text.replace("/usr/sbin/in.talkd", "/bin/true")
        result = inetd(tmp_path / "inetd.conf", text)
        assert [service["exec"] for service in served(result)] == [
            ["/bin/ls", "/var/www/html"],
            ["/bin/true"],
            ["/bin/cat"],
        ]
        talk = check(tmp_path, result).services[1]
        assert (talk.name, talk.wait, [str(a) for a in talk.listen]) == (
            "talk",
            True,
            ["udp:0.0.0.0:517", "udp:[::]:517"],
        )
        finger = check(tmp_path, result).services[2]
        assert (finger.name, finger.user, finger.group) == ("finger", "nobody", None)
        assert "tcpd dropped (/bin/cat is run directly): " in result.text


class TestListen:
    @pytest.mark.parametrize(
        ("protocol", "listen"),
        [
            ("tcp", BOTH),
            ("tcp4", ["0.0.0.0:7"]),
            ("tcp6", ["[::]:7"]),
            ("tcp46", BOTH),
        ],
    )
    def test_protocols(self, tmp_path: Path, protocol: str, listen: list[str]) -> None:
        """Protocol tcp is both families (a socket each, as openbsd-inetd), tcp4 and tcp6 one."""
        result = inetd(tmp_path / "inetd.conf", f"echo stream {protocol} nowait root internal\n")
        assert served(result)[0]["listen"] == listen
        assert result.problems == []

    @pytest.mark.parametrize(
        ("protocol", "listen"),
        [
            ("udp", ["udp:0.0.0.0:37", "udp:[::]:37"]),
            ("udp4", ["udp:0.0.0.0:37"]),
            ("udp6", ["udp:[::]:37"]),
            ("udp46", ["udp:0.0.0.0:37", "udp:[::]:37"]),
        ],
    )
    def test_udp_protocols(self, tmp_path: Path, protocol: str, listen: list[str]) -> None:
        """A dgram line is a UDP service, its families as TCP's, its port /etc/services' udp one."""
        result = inetd(tmp_path / "inetd.conf", f"time dgram {protocol} wait root internal\n")
        assert served(result) == [{"name": "time", "handler": "time", "listen": listen}]
        assert result.problems == []
        check(tmp_path, result)

    def test_too_many_hosts_fail_the_line_alone(self, tmp_path: Path) -> None:
        """More hosts than a service may listen on: that line fails, at once, the next serves."""
        hosts = ",".join(f"127.0.{n // 250}.{n % 250 + 1}" for n in range(2000))
        text = (
            f"{hosts}:echo stream tcp4 nowait root internal\n"
            "127.0.0.1:time stream tcp4 nowait root internal\n"
        )
        result = inetd(tmp_path / "inetd.conf", text)
        assert [service["name"] for service in served(result)] == ["time"]
        assert result.problems == [f"{tmp_path}/inetd.conf:1: echo: 2000 hosts: at most 64"]

    def test_a_host_name_is_looked_up_once_a_read(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A HOST: line's name, shared by the lines after it: looked up once, a failure too.

        A daemon's reload must not wait on a dead resolver once a line.
        """
        asked: list[str] = []
        real = socket.getaddrinfo

        def counting(host: str, *args: Any, **kwargs: Any) -> Any:
            if not host[:1].isdigit():
                asked.append(host)
            if host == "nowhere.invalid":
                raise socket.gaierror(-2, "Name or service not known")
            return real(host, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", counting)
        lines = [f"{port} stream tcp4 nowait root /bin/cat cat\n" for port in range(7001, 7004)]
        text = "localhost:\n" + "".join(lines) + "nowhere.invalid:\n" + "".join(lines)
        result = inetd(tmp_path / "inetd.conf", text)
        assert asked == ["localhost", "nowhere.invalid"]
        assert [service["listen"] for service in served(result)] == [
            [f"127.0.0.1:{port}"] for port in range(7001, 7004)
        ]
        assert len(result.problems) == 3
        assert all(
            problem.endswith("host 'nowhere.invalid' does not resolve")
            for problem in result.problems
        )

    def test_udp_nowait_program_and_unix_dgram(self, tmp_path: Path) -> None:
        """A dgram nowait program is served per datagram; a unix dgram line is unix-dgram:."""
        text = (
            "7007 dgram udp4 nowait.60 nobody /bin/cat cat -u\n"
            f"{tmp_path}/d.sock dgram unix nowait root /bin/cat cat\n"
        )
        result = inetd(tmp_path / "inetd.conf", text)
        (program,) = served(result)
        assert program["listen"] == ["udp:0.0.0.0:7007"]
        assert program["exec"] == ["/bin/cat", "-u"]
        assert (program["rate"], program["burst"]) == (1.0, 60)
        (unix,) = commented(result)
        assert unix["listen"] == [f"unix-dgram:{tmp_path}/d.sock"]
        assert result.problems == [
            (
                f"{tmp_path}/inetd.conf:2: d.sock: kept as a comment: service 'd.sock':"
                " exec: not with unix-dgram: addresses (a program per datagram serves udp: ones;"
                " wait = true gives one the socket itself)"
            )
        ]
        check(tmp_path, result)

    def test_numeric_port(self, tmp_path: Path) -> None:
        """A port number is a service field too."""
        result = inetd(tmp_path / "inetd.conf", "7007 stream tcp4 nowait nobody /bin/cat cat\n")
        assert served(result)[0]["listen"] == ["0.0.0.0:7007"]
        assert served(result)[0]["name"] == "7007"

    def test_unknown_service_name(self, tmp_path: Path) -> None:
        """A name unknown to /etc/services: a line naming FILE:LINE; the service stays a comment."""
        result = inetd(
            tmp_path / "inetd.conf", "# x\nnosuchsvc stream tcp nowait nobody /bin/cat cat\n"
        )
        assert served(result) == []
        where = f"{tmp_path}/inetd.conf:2"
        assert result.problems == [
            f"{where}: nosuchsvc: service 'nosuchsvc' is not in /etc/services for tcp"
        ]

    def test_local_addresses(self, tmp_path: Path) -> None:
        """`HOST:service` listens there only; a lone `HOST:` line sets it for the lines after."""
        text = (
            "127.0.0.1:echo stream tcp nowait root internal\n"
            "[::1]:discard stream tcp nowait root internal\n"
            "127.0.0.2,::1:\n"
            "daytime stream tcp nowait root internal\n"
            "*:\n"
            "time stream tcp4 nowait root internal\n"
        )
        listens = [service["listen"] for service in served(inetd(tmp_path / "inetd.conf", text))]
        assert listens == [
            ["127.0.0.1:7"],
            ["[::1]:9"],
            ["127.0.0.2:13", "[::1]:13"],
            ["0.0.0.0:37"],
        ]

    def test_unix(self, tmp_path: Path) -> None:
        """`stream unix` listens on the path; the name is its file name."""
        text = f"{tmp_path}/cat.sock stream unix nowait nobody /bin/cat cat\n"
        service = served(inetd(tmp_path / "inetd.conf", text))[0]
        assert service["listen"] == [f"unix:{tmp_path}/cat.sock"]
        assert service["name"] == "cat.sock"

    def test_same_name_twice(self, tmp_path: Path) -> None:
        """Two lines of one service get unique names, the second by its protocol."""
        text = "echo stream tcp4 nowait root internal\necho stream tcp6 nowait root internal\n"
        result = inetd(tmp_path / "inetd.conf", text)
        assert [service["name"] for service in served(result)] == ["echo", "echo-tcp6"]
        check(tmp_path, result)


class TestFields:
    def test_max_is_a_minute(self, tmp_path: Path) -> None:
        """The wait field nowait.120 (120 a minute) is rate 2 a second, burst 120, and says why."""
        result = inetd(tmp_path / "inetd.conf", "echo stream tcp nowait.120 root internal\n")
        service = served(result)[0]
        assert (service["rate"], service["burst"]) == (2.0, 120)
        assert "inetd stops the service for 10 minutes" in result.text
        assert result.problems == []

    def test_wait(self, tmp_path: Path) -> None:
        """A stream wait line is a wait service: wait.120 bounds its starts, 120 a minute."""
        result = inetd(tmp_path / "inetd.conf", "7000 stream tcp4 wait.120 nobody /bin/cat cat\n")
        (service,) = served(result)
        assert service["wait"] is True
        assert (service["exec"], service["listen"]) == (["/bin/cat"], ["0.0.0.0:7000"])
        assert (service["rate"], service["burst"]) == (2.0, 120)
        assert "120 starts a minute" in result.text
        assert result.problems == []
        assert check(tmp_path, result).services[0].wait

    @pytest.mark.parametrize(
        ("protocol", "listen"),
        [
            ("udp", ["udp:0.0.0.0:69", "udp:[::]:69"]),
            ("udp4", ["udp:0.0.0.0:69"]),
            ("udp6", ["udp:[::]:69"]),
        ],
    )
    def test_dgram_wait(self, tmp_path: Path, protocol: str, listen: list[str]) -> None:
        """A dgram wait line (in.tftpd's) is a wait service on UDP sockets of its families."""
        line = f"tftp dgram {protocol} wait root /bin/true in.tftpd -s /srv/tftp\n"
        result = inetd(tmp_path / "inetd.conf", line)
        (service,) = served(result)
        assert (service["listen"], service["wait"]) == (listen, True)
        assert service["exec"] == ["/bin/true", "-s", "/srv/tftp"]
        check(tmp_path, result)

    def test_unix_dgram_wait(self, tmp_path: Path) -> None:
        """A dgram unix wait line is a wait service on its path (a nowait one is refused)."""
        line = f"{tmp_path}/w.d dgram unix wait root /bin/true true\n"
        result = inetd(tmp_path / "inetd.conf", line)
        (service,) = served(result)
        assert (service["listen"], service["wait"]) == ([f"unix-dgram:{tmp_path}/w.d"], True)
        assert result.problems == []
        assert check(tmp_path, result).services[0].wait

    def test_wait_for_an_internal_service_is_left_out(self, tmp_path: Path) -> None:
        """An internal service's wait (inetd.conf's habit for dgram ones) means nothing to sockd."""
        result = inetd(tmp_path / "inetd.conf", "echo stream tcp wait root internal\n")
        assert [(s["handler"], "wait" in s) for s in served(result)] == [("echo", False)]
        assert "# - wait: an internal service is served by sockd itself" in result.text
        assert result.problems == []

    def test_bad_max(self, tmp_path: Path) -> None:
        """A maximum that is not a positive number is ignored, and said so."""
        result = inetd(tmp_path / "inetd.conf", "echo stream tcp nowait.x root internal\n")
        assert "rate" not in served(result)[0]
        assert result.problems[0].endswith(
            "'nowait.x': the maximum is not a positive number (ignored)"
        )

    @pytest.mark.parametrize("user", ["nobody:nogroup", "nobody.nogroup"])
    def test_user_and_group(self, tmp_path: Path, user: str) -> None:
        """user:group and user.group both set user and group."""
        result = inetd(tmp_path / "inetd.conf", f"echo stream tcp nowait {user} /bin/cat cat\n")
        assert (served(result)[0]["user"], served(result)[0]["group"]) == ("nobody", "nogroup")

    def test_arguments(self, tmp_path: Path) -> None:
        """The arguments after argv[0] are exec's; a program named otherwise in argv[0] is said."""
        text = "echo stream tcp nowait nobody /bin/echo echo -n hi\n"
        text += "discard stream tcp nowait nobody /bin/echo httpd -i\n"
        result = inetd(tmp_path / "inetd.conf", text)
        assert [service["exec"] for service in served(result)] == [
            ["/bin/echo", "-n", "hi"],
            ["/bin/echo", "-i"],
        ]
        assert result.problems == [
            (
                f"{tmp_path}/inetd.conf:2: discard: argv[0] 'httpd' is not the program's name:"
                " sockd runs /bin/echo as 'echo'"
            )
        ]

    def test_tcpd_with_rules(self, tmp_path: Path) -> None:
        """With rules in hosts.deny, tcpd dropped is a part lost (the service is wider now)."""
        (tmp_path / "hosts.deny").write_text("# comment\nALL: ALL\n")
        text = "finger stream tcp nowait nobody /usr/sbin/tcpd in.fingerd\n"
        text += "echo stream tcp nowait nobody /usr/sbin/tcpd /bin/cat\n"
        result = inetd(tmp_path / "inetd.conf", text)
        assert commented(result)[0]["exec"] == ["/usr/sbin/in.fingerd"]  # tcpd's own directory
        assert served(result)[0]["exec"] == ["/bin/cat"]
        assert len(result.problems) == 3  # and finger's: no such program
        assert result.problems[2] == (
            f"{tmp_path}/inetd.conf:2: echo: tcpd dropped (/bin/cat is run directly): the rules in"
            f" {tmp_path}/hosts.deny no longer apply; write them as allow/deny"
        )

    @pytest.mark.parametrize(
        "hosts_deny",
        [b"# J\xfcrgen's rules\nALL: ALL\n", b"\xff", None],
        ids=["latin-1", "bad", "dir"],
    )
    def test_tcpd_rules_not_read_are_rules(self, tmp_path: Path, hosts_deny: bytes | None) -> None:
        """hosts.deny not UTF-8, or not readable: taken as holding rules (never served wider)."""
        if hosts_deny is None:
            (tmp_path / "hosts.deny").mkdir()
        else:
            (tmp_path / "hosts.deny").write_bytes(hosts_deny)
        result = inetd(
            tmp_path / "inetd.conf", "echo stream tcp nowait nobody /usr/sbin/tcpd /bin/cat\n"
        )
        (problem,) = result.problems
        assert problem == (
            f"{tmp_path}/inetd.conf:1: echo: tcpd dropped (/bin/cat is run directly): the rules in"
            f" {tmp_path}/hosts.deny no longer apply; write them as allow/deny"
        )

    @pytest.mark.parametrize(
        ("line", "problem"),
        [
            ("echo stream tcp nowait root", "5 fields: expected service, socket type,"),
            ("echo dgram udp nowait root internal", "UDP echo answers any forged source"),
            ("chargen dgram udp wait root internal", "set udp_reflection = true to serve it"),
            ("echo dgram tcp nowait root internal", "dgram tcp: datagram sockets are udp"),
            ("echo stream udp nowait root internal", "stream udp: datagram sockets are udp"),
            ("echo raw tcp nowait root internal", "socket type 'raw': sockd serves stream"),
            ("echo stream sctp nowait root internal", "protocol 'sctp': expected tcp, tcp4"),
            ("rstatd/1-3 dgram rpc/udp wait root /bin/cat", "rpc/udp: RPC services"),
            ("tcpmux stream tcp nowait root internal", "internal service 'tcpmux' has no sockd"),
            ("echo stream tcp waitless root internal", "'waitless': expected wait or nowait"),
        ],
    )
    def test_no_equivalent(self, tmp_path: Path, line: str, problem: str) -> None:
        """What sockd cannot serve keeps the service as a comment, with one line on stderr."""
        result = inetd(tmp_path / "inetd.conf", f"{line}\n")
        assert served(result) == []
        assert len(result.problems) == 1
        assert problem in result.problems[0]
        assert result.problems[0].startswith(f"{tmp_path}/inetd.conf:1: ")

    def test_disabled_line(self, tmp_path: Path) -> None:
        """A #<off># line: a service kept as a comment, no problem; it says what check would."""
        text = "echo stream tcp nowait root internal\n"
        text += (
            "#<off># finger\tstream\ttcp\tnowait\tnobody\t/usr/sbin/tcpd\t/usr/sbin/in.fingerd\n"
        )
        result = inetd(tmp_path / "inetd.conf", text)
        assert [service["name"] for service in commented(result)] == ["finger"]
        assert result.problems == []
        assert "# - disabled by update-inetd (#<off>#): uncomment to serve it" in result.text
        assert (
            "# - sockd check would refuse it: service 'finger': exec[0]: /usr/sbin/in.fingerd:"
            " no such program"
        ) in result.text

    def test_fields_are_bounded(self, tmp_path: Path) -> None:
        """A line of a million arguments fails, its fields read no further than the bound."""
        text = "echo stream tcp nowait root /bin/cat cat" + " ab" * 1_000_000 + "\n"
        result = inetd(tmp_path / "inetd.conf", text)
        assert result.problems == [
            f"{tmp_path}/inetd.conf:1: echo: more than 262 fields (exec takes 256 items at most)"
        ]

    def test_size_is_bounded(self, tmp_path: Path) -> None:
        """A file over 4 MiB is one error, before a line is read: the daemon reads it at SIGHUP."""
        path = tmp_path / "inetd.conf"
        path.write_text("##\n" * (inetdconf.MAX_BYTES // 3 + 1))
        with pytest.raises(ConfigError, match=f"^{path}: larger than 4194304 bytes$"):
            inetdconf.read(str(path))

    def test_disabled_mark_alone(self, tmp_path: Path) -> None:
        """A `#<off>#` with nothing after it is a comment (it was an IndexError)."""
        text = f"{inetdconf.OFF}\n  {inetdconf.OFF} \necho stream tcp nowait root internal\n"
        result = inetd(tmp_path / "inetd.conf", text)
        assert [service["name"] for service in served(result)] == ["echo"]
        assert result.problems == []

    def test_buffer_sizes(self, tmp_path: Path) -> None:
        """tcp,rcvbuf=... is served without the buffer size, which is said."""
        result = inetd(tmp_path / "inetd.conf", "echo stream tcp,rcvbuf=64k nowait root internal\n")
        assert served(result)[0]["handler"] == "echo"
        assert result.problems[0].endswith("rcvbuf=64k: sockd does not size socket buffers")

    def test_a_comment_hides_no_line(self, tmp_path: Path) -> None:
        """A form feed in a comment does not start a line: inetd sees one comment, so does sockd."""
        text = "# old\x0c7 stream tcp nowait root /bin/sh sh -i\n"
        text += "echo stream tcp nowait root internal\n"
        path = tmp_path / "inetd.conf"
        path.write_text(text)
        entries = inetdconf.read(str(path))
        assert [(entry.origin, entry.base) for entry in entries] == [(f"{path}:2", "echo")]

    def test_fields_apart_by_spaces_and_tabs_only(self, tmp_path: Path) -> None:
        """A no-break space is part of a field, as in inetd; a CRLF ends the line."""
        text = "echo\tstream tcp nowait nobody /bin/echo echo a\xa0b\r\n"
        result = inetd(tmp_path / "inetd.conf", text)
        assert served(result)[0]["exec"] == ["/bin/echo", "a\xa0b"]

    def test_not_utf8(self, tmp_path: Path) -> None:
        """A Latin-1 comment is a comment; a service line not UTF-8 fails alone, named."""
        path = tmp_path / "inetd.conf"
        path.write_bytes(
            b"# J\xfcrgen's services\n"
            b"discard stream tcp nowait nobody /bin/echo \xe9cho\n"
            b"echo stream tcp nowait root internal\n"
        )
        result = importer.convert(inetdconf.read(str(path)), str(path))
        assert [service["name"] for service in served(result)] == ["echo"]
        assert result.problems == [f"{path}:2: discard: not UTF-8"]

    def test_continuation(self, tmp_path: Path) -> None:
        """A line starting with a space or a tab continues the one before, as in openbsd-inetd."""
        text = (
            "echo stream tcp nowait nobody /bin/echo echo a \\\n  discard\n"  # not a service
            "127.0.0.1:\n\tdaytime stream tcp nowait root internal\n"  # HOST: on its own line
            "\n  time stream tcp nowait root internal\n"  # after a blank line: a line
            "::1: chargen stream tcp6 nowait root internal\n"
            f"{inetdconf.OFF} finger stream tcp nowait nobody /bin/echo echo\n"
            "\tdiscard stream tcp nowait root internal\n"  # after a comment: a line
        )
        result = inetd(tmp_path / "inetd.conf", text)
        echo, daytime, time, chargen, discard = served(result)
        assert echo["exec"] == ["/bin/echo", "a", "\\", "discard"]
        assert daytime["listen"] == ["127.0.0.1:13"]
        assert time["listen"] == ["0.0.0.0:37", "[::]:37"]
        assert chargen["listen"] == ["[::1]:19"]
        assert discard["handler"] == "discard"
        assert [service["name"] for service in commented(result)] == ["finger"]

    def test_unreadable(self, tmp_path: Path) -> None:
        """A file that cannot be read is one line naming it."""
        with pytest.raises(ConfigError, match=r"/nonexistent: cannot read: No such file"):
            inetdconf.read(f"{tmp_path}/nonexistent")
