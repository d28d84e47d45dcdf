"""Tests of sockd.spec: the service record from config to forker, its wire form and its checks."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import marshal
import os
from typing import TYPE_CHECKING

import pytest

from sockd import ipc
from sockd.spec import Limits, ServiceSpec, WireError, services_from_wire
from sockd.supervisor.config import ListenAddress, ServiceConfig, service_spec

if TYPE_CHECKING:
    from collections.abc import Iterator

# Every field set, none to its default: a field dropped on the way shows.
EVERY = ServiceConfig(
    "every",
    "echo",
    listen=(ListenAddress("tcp", "127.0.0.1", 7),),
    max_children=3,
    allow=(ipaddress.ip_network("10.0.0.0/8"),),
    deny=(ipaddress.ip_network("::1/128"), ipaddress.ip_network("10.1.0.0/16")),
    max_duration=2.5,
    idle_timeout=1.5,
    exec=("/bin/cat", "-u"),
    program="/bin/cat",
    env=(("A", "1"), ("B", "x y")),
    user="root",
    group="root",
    refusal="busy\r\n",
    workers=4,
    max_connections_per_child=9,
    proxy_protocol=True,
    proxy_trusted=(ipaddress.ip_network("192.0.2.0/24"),),
    proxy_timeout=0.5,
    udp_reflection=True,
    wait=True,
    rlimits=(("as", None), ("files", 64)),
    limits=Limits(
        per_source=2,
        source_prefix_v4=24,
        source_prefix_v6=48,
        rate=5.0,
        burst=7,
        per_source_rate=1.5,
        per_source_burst=3,
    ),
)
# Not carried as such: the daemon passes the listening sockets themselves, and
# a program's user and group go as the ids they resolve to (`identity`).
NOT_CARRIED = {"listen", "unix_mode", "user", "group"}  # the daemon binds and passes sockets


def wire(**changes: object) -> list[object]:
    """Return EVERY's wire form with some fields' wire values replaced."""
    values = list(service_spec(EVERY).to_wire())
    names = [name for name, _ in ServiceSpec.FIELDS]
    for name, value in changes.items():
        values[names.index(name)] = value
    return values


@pytest.fixture
def pair() -> Iterator[tuple[int, int]]:
    """Make a channel: (writer's descriptor, reader's descriptor)."""
    writer, reader = (sock.detach() for sock in ipc.channel())
    yield writer, reader
    for fd in (writer, reader):
        with contextlib.suppress(OSError):
            os.close(fd)


class TestFromConfig:
    def test_every_config_field_is_carried(self) -> None:
        """Each ServiceConfig field reaches the spec with its value (networks as text)."""
        spec = service_spec(EVERY)
        blank = ServiceSpec("blank", None)
        carried = {field.name for field in dataclasses.fields(ServiceConfig)} - NOT_CARRIED
        assert set(ServiceSpec.__slots__) == carried | {"identity"}
        for name in sorted(carried):
            expected = getattr(EVERY, name)
            if name in ("allow", "deny", "proxy_trusted"):
                expected = tuple(str(network) for network in expected)
            assert getattr(spec, name) == expected, name
            assert getattr(spec, name) != getattr(blank, name), f"{name}: set to its default"
        assert spec.identity == [0, 0, os.getgrouplist("root", 0)]

    def test_a_handler_has_no_identity(self) -> None:
        """Without `user` the forker decides who runs the service: the spec says None."""
        assert service_spec(ServiceConfig("h", "echo")).identity is None

    def test_each_class_names_every_slot_once_on_the_wire(self) -> None:
        """FIELDS (the wire's order) and __slots__ name the same attributes."""
        for cls in (ServiceSpec, Limits):
            names = [name for name, _ in cls.FIELDS]
            assert sorted(names) == sorted(cls.__slots__), cls.__name__
            assert len(set(names)) == len(names)


class TestWire:
    def test_round_trip_through_marshal(self) -> None:
        """to_wire() holds only what marshal takes; from_wire() gives an equal spec back."""
        spec = service_spec(EVERY)
        data = ipc.encode(spec.to_wire())  # marshal.dumps
        back = ServiceSpec.from_wire(marshal.loads(data))  # noqa: S302 (our own bytes)
        assert back == spec
        assert back.as_dict() == spec.as_dict()
        assert back.limits == EVERY.limits
        assert ServiceSpec.from_wire(ServiceSpec("h", "echo").to_wire()) == ServiceSpec("h", "echo")

    def test_round_trip_through_the_channel(self, pair: tuple[int, int]) -> None:
        """A setup and a reload record carry specs the reader's shape check accepts, unchanged."""
        writer, reader_fd = pair
        specs = [service_spec(EVERY), ServiceSpec("h", "echo", max_duration=1)]
        wires = [spec.to_wire() for spec in specs]
        ipc.send(writer, ("setup", {"max_children": 8}, wires))
        ipc.send(writer, ("reload", 1, wires, 128, 10.0, 0))
        records = ipc.Reader(reader_fd).read()
        assert len(records) == 2
        for record in records:
            assert ipc.problem(record, ipc.COMMANDS) is None
            assert services_from_wire(record[2]) == specs

    def test_values_keep_their_types(self) -> None:
        """Sequences come back as tuples, identity as [uid, gid, [groups]], whatever list came."""
        back = ServiceSpec.from_wire(wire(exec=["/bin/cat"], identity=(1, 2, (3,))))
        assert back.exec == ("/bin/cat",)
        assert back.identity == [1, 2, [3]]
        assert back.env == (("A", "1"), ("B", "x y"))
        back = ServiceSpec.from_wire(wire(rlimits=[["files", 64], ["as", None]]))
        assert back.rlimits == (("files", 64), ("as", None))


class TestMalformed:
    @pytest.mark.parametrize(
        ("data", "problem"),
        [
            ("every", f"expected {len(ServiceSpec.FIELDS)} values, got str"),
            (wire()[:14], f"expected {len(ServiceSpec.FIELDS)} values, got list of 14"),
            (wire(name=1), "name: expected a string, got int"),
            (wire(handler=True), "handler: expected a string or None, got bool"),
            (wire(exec=("/bin/cat", b"-u")), "exec: item 1: expected a string, got bytes"),
            (wire(env={"A": "1"}), "env: expected a list, got dict"),
            (wire(env=[("A",)]), "env: item 0: expected [name, value], got tuple of 1"),
            (wire(env=[("A", 1)]), "env: item 0: item 1: expected a string, got int"),
            (wire(identity=[0, 0]), "identity: expected None or [uid, gid, groups], got list of 2"),
            (wire(identity=[0, 0, ["root"]]), "identity: groups: item 0: expected an integer"),
            (wire(identity=[0, "0", []]), "identity: gid: expected an integer, got str"),
            (wire(identity=[0, 0, 0]), "identity: groups: expected a list, got int"),
            (wire(max_children=True), "max_children: expected an integer or None, got bool"),
            (wire(max_duration="1"), "max_duration: expected a number or None, got str"),
            (wire(deny="10.0.0.0/8"), "deny: expected a list, got str"),
            (wire(refusal=b""), "refusal: expected a string, got bytes"),
            (wire(limits={}), "limits: expected 7 values, got dict"),
            (wire(limits=(2, 24, 48, "5", 7, 1.5, 3)), "limits: rate: expected a number or None"),
            (wire(workers=4.0), "workers: expected an integer or None, got float"),
            (wire(proxy_protocol=1), "proxy_protocol: expected true or false, got int"),
            (wire(proxy_trusted=[1]), "proxy_trusted: item 0: expected a string, got int"),
            (wire(proxy_timeout=None), "proxy_timeout: expected a number, got NoneType"),
            (wire(rlimits={"files": 1}), "rlimits: expected a list, got dict"),
            (wire(rlimits=[("files",)]), "rlimits: item 0: expected [name, limit], got tuple of 1"),
            (wire(rlimits=[("nice", 1)]), "rlimits: item 0: 'nice' is not a resource"),
            (wire(rlimits=[(1, 1)]), "rlimits: item 0: name: expected a string, got int"),
            (wire(rlimits=[("as", 1), ("as", 2)]), "rlimits: item 1: 'as' given twice"),
            (wire(rlimits=[("as", "1")]), "rlimits: item 0: limit: expected an integer or None"),
            (wire(rlimits=[("as", -1)]), "rlimits: item 0: -1 is not a limit (0 to 2^63-1)"),
            (
                wire(rlimits=[("as", 1 << 63)]),
                "rlimits: item 0: 9223372036854775808 is not a limit",
            ),
        ],
    )
    def test_is_refused_naming_the_field(self, data: object, problem: str) -> None:
        """Each wrong shape or type is a WireError that says where and what."""
        with pytest.raises(WireError) as raised:
            ServiceSpec.from_wire(data)
        assert str(raised.value).startswith(problem)

    def test_a_list_of_services_names_the_place_of_a_malformed_one(self) -> None:
        """services_from_wire names the service's place and its field (the forker logs it).

        ipc.problem checks the record's own shape only: the forker decodes the
        services once, when it acts on the record (sockd.forker.loop).
        """
        good = service_spec(EVERY).to_wire()
        reload = ("reload", 3, [good, wire(max_children="3")], 128, 10.0, 0)
        assert ipc.problem(reload, ipc.COMMANDS) is None
        with pytest.raises(WireError) as raised:
            services_from_wire(reload[2])
        assert str(raised.value) == "service 1: max_children: expected an integer or None, got str"
        with pytest.raises(WireError) as raised:
            services_from_wire([wire(name=None)])
        assert str(raised.value) == "service 0: name: expected a string, got NoneType"
        assert ipc.problem(("setup", {}, {"every": good}), ipc.COMMANDS) is not None
        assert ipc.problem(("setup", {"services": [good]}), ipc.COMMANDS) is not None
