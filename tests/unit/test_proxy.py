"""Tests of sockd.proxy: PROXY headers v1 and v2 parsed as the spec says, from real sockets."""

from __future__ import annotations

import fcntl
import random
import select
import socket
import sys
import termios
import threading
import time
import tracemalloc
from typing import TYPE_CHECKING

import pytest

from sockd import proxy
from sockd.proxy import SIGNATURE, Header, ProxyError, crc32c, parse, read, receive

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

SPEC_V1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"  # section 2.1's example
V6_MAX = ":".join(["ffff"] * 8).encode()
PAYLOAD = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"


def tlv(kind: int, value: bytes) -> bytes:
    """Return one TLV: type, big-endian length, value."""
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def v2_header(  # noqa: PLR0913 (each part of a header, as a test wants it)
    command: int = 1,
    family: int = 0x11,
    source: tuple[str, int] | bytes = ("192.0.2.1", 56324),
    destination: tuple[str, int] | bytes = ("198.51.100.11", 443),
    tlvs: Sequence[bytes] = (),
    *,
    crc: bool = False,
    block: bytes | None = None,
    version: int = 2,
) -> bytes:
    """Build a v2 header as HAProxy's make_proxy_line_v2 does (the CRC32C TLV first, if any)."""
    if block is None:
        block = b""
        if family >> 4 in (1, 2):
            assert isinstance(source, tuple)
            assert isinstance(destination, tuple)
            af = socket.AF_INET if family >> 4 == 1 else socket.AF_INET6
            block = socket.inet_pton(af, source[0]) + socket.inet_pton(af, destination[0])
            block += source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
        elif family >> 4 == 3:
            assert isinstance(source, bytes)
            assert isinstance(destination, bytes)
            block = source.ljust(108, b"\0") + destination.ljust(108, b"\0")
    body = block + (tlv(proxy.CRC32C, bytes(4)) if crc else b"") + b"".join(tlvs)
    fixed = SIGNATURE + bytes([version << 4 | command, family]) + len(body).to_bytes(2, "big")
    header = fixed + body
    if crc:
        at = 16 + len(block) + 3
        header = header[:at] + crc32c(header).to_bytes(4, "big") + header[at + 4 :]
    return header


def ssl_tlv(client: int, verify: int, *subs: bytes) -> bytes:
    """Return a PP2_TYPE_SSL TLV: client flags, verify, sub-TLVs."""
    return tlv(proxy.SSL, bytes([client]) + verify.to_bytes(4, "big") + b"".join(subs))


def full_v2() -> bytes:
    """Return a v2 header with every TLV HAProxy sends (proxy-v2-options crc32c,ssl,...)."""
    return v2_header(
        tlvs=[
            tlv(proxy.ALPN, b"h2"),
            tlv(proxy.AUTHORITY, "bücher.example".encode()),
            tlv(proxy.UNIQUE_ID, b"\x01" * 128),
            ssl_tlv(
                0x07,
                0,
                tlv(0x21, b"TLSv1.3"),
                tlv(0x22, b"client.example"),
                tlv(0x25, b"RSA2048"),
                tlv(0x24, b"RSA-SHA256"),
                tlv(0x23, b"TLS_AES_256_GCM_SHA384"),
            ),
            tlv(proxy.NETNS, b"blue"),
            tlv(proxy.NOOP, b"\0\0\0"),
            tlv(0xE0, b"custom"),
        ],
        crc=True,
    )


def valid_headers() -> list[bytes]:
    """Return a valid header of every kind."""
    return [
        SPEC_V1,
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        b"PROXY TCP6 " + V6_MAX + b" " + V6_MAX + b" 65535 65535\r\n",
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN " + V6_MAX + b" " + V6_MAX + b" 65535 65535\r\n",
        v2_header(),
        v2_header(family=0x21, source=("2001:db8::1", 1), destination=("::1", 2)),
        v2_header(family=0x31, source=b"/run/client", destination=b"/run/sockd.sock"),
        v2_header(command=0, family=0x00),
        full_v2(),
    ]


def refused(data: bytes) -> str:
    """Return the message of the ProxyError that parse(data) raises."""
    with pytest.raises(ProxyError) as caught:
        parse(data)
    return str(caught.value)


class TestCrc32c:
    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            (b"123456789", 0xE3069283),  # the CRC catalogue's check value
            (bytes(32), 0x8A9136AA),  # RFC 3720 B.4
            (b"\xff" * 32, 0x62A8AB43),
            (bytes(range(32)), 0x46DD794E),
            (bytes(range(31, -1, -1)), 0x113FDB5C),
            (b"", 0),
        ],
    )
    def test_known_vectors(self, data: bytes, expected: int) -> None:
        """crc32c is Castagnoli's CRC: the published check values."""
        assert crc32c(data) == expected

    def test_it_goes_on_from_a_crc(self) -> None:
        """A CRC over parts, chained, is the CRC over the whole."""
        assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283


class TestV1:
    def test_the_specs_example(self) -> None:
        """Section 2.1's line gives the client and destination; the request after it is left."""
        header = parse(SPEC_V1 + PAYLOAD)
        assert isinstance(header, Header)
        assert header.version == 1
        assert header.family == socket.AF_INET
        assert header.source == ("192.168.0.1", 56324)
        assert header.destination == ("192.168.0.11", 443)
        assert not header.local
        assert not header.datagram
        assert header.size == len(SPEC_V1)
        assert header.tlvs == ()
        assert header.ssl is None

    @pytest.mark.parametrize(
        ("line", "size"),
        [
            (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", 56),
            (b"PROXY TCP6 " + V6_MAX + b" " + V6_MAX + b" 65535 65535\r\n", 104),
            (b"PROXY UNKNOWN\r\n", 15),
            (b"PROXY UNKNOWN " + V6_MAX + b" " + V6_MAX + b" 65535 65535\r\n", 107),
        ],
    )
    def test_the_specs_longest_lines(self, line: bytes, size: int) -> None:
        """The spec's longest line of each kind parses, to its length (107 the longest of all)."""
        header = parse(line)
        assert isinstance(header, Header)
        assert header.size == size

    def test_tcp6_written_canonical(self) -> None:
        """TCP6 addresses in any form inet_pton takes come out canonical, as v2's do."""
        header = parse(b"PROXY TCP6 2001:DB8:0:0::1 ::FFFF:192.0.2.1 0 65535\r\n")
        assert isinstance(header, Header)
        assert header.family == socket.AF_INET6
        assert header.source == ("2001:db8::1", 0)
        assert header.destination == ("::ffff:192.0.2.1", 65535)

    def test_unknown_is_local_whatever_follows(self) -> None:
        """UNKNOWN: the rest of the line is ignored, the real endpoints are used."""
        header = parse(b"PROXY UNKNOWN what ever 1.2.3.4 99999\r\nDATA")
        assert isinstance(header, Header)
        assert header.local
        assert header.source is None
        assert header.destination is None
        assert header.family == socket.AF_UNSPEC
        assert header.size == len(b"PROXY UNKNOWN what ever 1.2.3.4 99999\r\n")

    @pytest.mark.parametrize(
        ("line", "message"),
        [
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", "v1: bad source port '99999'"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "bad destination port '65536'"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 1\r\n", "bad source port '080'"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 1\r\n", "bad source port '+80'"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 1\r\n", "bad source port '-1'"),
            (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "bad source address '01.2"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n", "bad destination address '5.6.7.256'"),
            (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "bad source address '1.2.3'"),
            (b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "bad source address '1.2.3.4."),
            (b"PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n", "bad source address '1.."),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "bad source address ':"),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad source address '1.2.3.4'"),
            (b"PROXY TCP6 ::1 1::2::3 1 2\r\n", "bad destination address '1::2::3'"),
            (b"PROXY TCP6 ::1%lo ::1 1 2\r\n", "bad source address '::1%"),
            (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "bad source address ''"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "more than 4 fields"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "more than 4 fields"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "TCP4 needs 4 fields after it, not 3"),
            (b"PROXY TCP4\r\n", "TCP4 needs 4 fields after it, not 0"),
            (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol 'TCP5'"),
            (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol 'U"),
            (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol 't"),
            (b"PROXY UNKNOWNX\r\n", "unknown protocol 'UNKNOWNX'"),
            (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol ''"),
            (b"PROXY\r\n", "no protocol"),
            (b"PROXYTCP4 1.2.3.4\r\n", "does not start with 'PROXY '"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "byte 0x0a"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n", "a CR not followed by LF"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "a CR not followed by LF"),
            (b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", "byte 0x09"),
            (b"PROXY UNKNOWN \x00\r\n", "byte 0x00"),
            (b"PROXY UNKNOWN \xc3\xa9\r\n", "byte 0xc3"),
            (b"PROXY UNKNOWN \x7f\r\n", "byte 0x7f"),
            (b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", "no CRLF in the first 107 bytes"),
            (b"PROXY UNKNOWN " + b"x" * 200, "no CRLF in the first 107 bytes"),
        ],
    )
    def test_invalid_lines(self, line: bytes, message: str) -> None:
        """A line that does not match the spec exactly is refused, saying what is wrong."""
        assert message in refused(line)

    @pytest.mark.parametrize("port", [b"0", b"1", b"9", b"10", b"65535"])
    def test_ports_in_range(self, port: bytes) -> None:
        """Ports 0..65535 in decimal, a lone 0 included, are taken."""
        header = parse(b"PROXY TCP4 0.0.0.0 10.0.0.1 " + port + b" " + port + b"\r\n")
        assert isinstance(header, Header)
        assert header.source == ("0.0.0.0", int(port))

    @pytest.mark.parametrize(
        "prefix",
        [
            b"X",
            b"PRO\r",
            b"PROXY X",
            b"PROXY TCP4 01",
            b"PROXY TCP4 300",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 00",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000",
            b"PROXY TCP4 1.2.3.4  ",
            b"PROXY TCP6 ::g",
            b"PROXY UNKNOWN \n",
        ],
    )
    def test_fails_at_once(self, prefix: bytes) -> None:
        """A wrong byte is refused as it arrives, without waiting for the CRLF."""
        refused(prefix)


class TestV2:
    def test_tcp4(self) -> None:
        """PROXY over TCP/IPv4: the client and destination from the address block."""
        header = parse(v2_header() + PAYLOAD)
        assert isinstance(header, Header)
        assert header.version == 2
        assert header.family == socket.AF_INET
        assert not header.datagram
        assert not header.local
        assert header.source == ("192.0.2.1", 56324)
        assert header.destination == ("198.51.100.11", 443)
        assert header.size == 28
        assert header.tlvs == ()

    def test_tcp6_and_udp(self) -> None:
        """PROXY over TCP/IPv6 and UDP/IPv6, UDP/IPv4: addresses canonical, datagram set."""
        header = parse(v2_header(family=0x21, source=("2001:db8::1", 1), destination=("::", 0)))
        assert isinstance(header, Header)
        assert (header.family, header.datagram, header.size) == (socket.AF_INET6, False, 52)
        assert header.source == ("2001:db8::1", 1)
        assert header.destination == ("::", 0)
        header = parse(v2_header(family=0x22, source=("::1", 53), destination=("::2", 53)))
        assert isinstance(header, Header)
        assert header.datagram
        header = parse(v2_header(family=0x12))
        assert isinstance(header, Header)
        assert (header.family, header.datagram) == (socket.AF_INET, True)

    def test_unix(self) -> None:
        """AF_UNIX: paths up to the first NUL, abstract names as @name, unnamed as ''."""
        header = parse(v2_header(family=0x31, source=b"/run/c\0junk", destination=b"\0abstract"))
        assert isinstance(header, Header)
        assert header.family == socket.AF_UNIX
        assert header.size == 16 + 216
        assert header.source == "/run/c"
        assert header.destination == "@abstract"
        header = parse(v2_header(family=0x32, source=b"", destination=b"/" + b"x" * 107))
        assert isinstance(header, Header)
        assert header.datagram
        assert header.source == ""
        assert header.destination == "/" + "x" * 107

    def test_local_is_served_with_the_real_endpoints(self) -> None:
        """LOCAL (a health check): local, no addresses, even with an address block."""
        for data in (v2_header(command=0, family=0x00), v2_header(command=0)):
            header = parse(data)
            assert isinstance(header, Header)
            assert header.local
            assert header.source is None
            assert header.destination is None
            assert header.size == len(data)

    def test_proxy_unspec_is_local(self) -> None:
        """PROXY with AF_UNSPEC: the real endpoints, its bytes skipped as TLVs after no address."""
        header = parse(v2_header(family=0x00, tlvs=[tlv(proxy.NOOP, b"")]))
        assert isinstance(header, Header)
        assert header.local
        assert header.tlvs == ((proxy.NOOP, b""),)

    def test_every_tlv(self) -> None:
        """HAProxy's TLVs are all kept in order, and the known ones decoded."""
        data = full_v2()
        header = parse(data)
        assert isinstance(header, Header)
        assert header.size == len(data)
        assert [kind for kind, _ in header.tlvs] == [3, 1, 2, 5, 0x20, 0x30, 4, 0xE0]
        assert header.tlvs[-1] == (0xE0, b"custom")
        assert header.tlvs[-3] == (proxy.NETNS, b"blue")
        assert header.alpn == b"h2"
        assert header.authority == "bücher.example"
        assert header.unique_id == b"\x01" * 128
        ssl = header.ssl
        assert ssl is not None
        assert (ssl.client, ssl.verify, ssl.verified) == (7, 0, True)
        assert ssl.version == "TLSv1.3"
        assert ssl.cn == "client.example"
        assert ssl.cipher == "TLS_AES_256_GCM_SHA384"
        assert ssl.sig_alg == "RSA-SHA256"
        assert ssl.key_alg == "RSA2048"

    def test_ssl_verified_needs_a_certificate(self) -> None:
        """A verify of 0 without a certificate flag (no certificate, in HAProxy) is not verified."""
        for client, verify, verified in ((1, 0, False), (3, 0, True), (5, 0, True), (3, 20, False)):
            header = parse(v2_header(tlvs=[ssl_tlv(client, verify)]))
            assert isinstance(header, Header)
            assert header.ssl is not None
            assert header.ssl.verified is verified
            assert header.ssl.cn is None

    def test_ssl_strings_replace_bad_utf8(self) -> None:
        """An SSL sub-TLV that is not UTF-8 is decoded with U+FFFD (a Latin-1 CN)."""
        header = parse(v2_header(tlvs=[ssl_tlv(3, 0, tlv(0x22, b"caf\xe9"))]))
        assert isinstance(header, Header)
        assert header.ssl is not None
        assert header.ssl.cn == "caf\ufffd"

    def test_the_first_of_a_tlv_counts(self) -> None:
        """A TLV given twice: the first is used (as HAProxy does), both are kept raw."""
        header = parse(
            v2_header(tlvs=[tlv(1, b"h2"), tlv(1, b"http/1.1"), tlv(2, b"a"), tlv(2, b"b")])
        )
        assert isinstance(header, Header)
        assert header.alpn == b"h2"
        assert header.authority == "a"
        assert len(header.tlvs) == 4

    def test_crc32c_checked(self) -> None:
        """A CRC32C TLV is checked over the whole header with its own field zeroed."""
        data = v2_header(tlvs=[tlv(proxy.ALPN, b"h2")], crc=True)
        header = parse(data)
        assert isinstance(header, Header)
        assert header.tlvs[0][0] == proxy.CRC32C
        for at in (16, 32, len(data) - 1):  # an address, the checksum, the ALPN
            broken = bytearray(data)
            broken[at] ^= 0x01
            assert refused(bytes(broken)) == "v2: wrong CRC32C"

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (b"\r\n\r\n\x00\r\nQUIX\n" + bytes(4), "v2: bad signature"),
            (v2_header(version=1), "v2: version 1, not 2"),
            (v2_header(version=3), "v2: version 3, not 2"),
            (v2_header(command=2), "v2: unknown command 2"),
            (v2_header(command=0xF), "v2: unknown command 15"),
            (v2_header(family=0x13, block=bytes(12)), "unknown family and transport 0x13"),
            (v2_header(family=0x41, block=bytes(12)), "unknown family and transport 0x41"),
            (v2_header(family=0x01, block=b""), "unknown family and transport 0x01"),
            (v2_header(block=bytes(11)), "v2: length 11 is under family 0x11's 12"),
            (v2_header(family=0x21, block=bytes(35)), "length 35 is under family 0x21's 36"),
            (v2_header(family=0x31, block=bytes(215)), "length 215 is under family 0x31's 216"),
            (v2_header(command=0, block=b""), "v2: length 0 is under family 0x11's 12"),
            (v2_header(tlvs=[b"\x01"]), "v2: a TLV's type and length run past the header's end"),
            (v2_header(tlvs=[b"\x01\x00"]), "type and length run past the header's end"),
            (v2_header(tlvs=[b"\x20\x00\x01"]), "v2: TLV 0x20 runs past the header's end"),
            (v2_header(tlvs=[tlv(1, b"h2") + b"\x02\xff\xff" + bytes(7)]), "TLV 0x02 runs past"),
            (v2_header(tlvs=[tlv(3, bytes(3))]), "v2: CRC32C TLV of 3 bytes, not 4"),
            (v2_header(tlvs=[tlv(3, bytes(5))]), "v2: CRC32C TLV of 5 bytes, not 4"),
            (v2_header(tlvs=[tlv(3, bytes(4))]), "v2: wrong CRC32C"),
            (v2_header(tlvs=[tlv(3, bytes(4)), tlv(3, bytes(4))]), "v2: two CRC32C TLVs"),
            (v2_header(tlvs=[tlv(2, b"\xff")]), "v2: AUTHORITY is not UTF-8"),
            (v2_header(tlvs=[tlv(2, b"a\0b")]), "v2: AUTHORITY holds a NUL"),
            (v2_header(tlvs=[tlv(5, bytes(129))]), "v2: UNIQUE_ID of 129 bytes, over 128"),
            (v2_header(tlvs=[tlv(0x20, bytes(4))]), "SSL TLV of 4 bytes, under its 5 fixed ones"),
            (v2_header(tlvs=[ssl_tlv(1, 0, b"\x21\x00")]), "type and length run past the SSL"),
            (v2_header(tlvs=[ssl_tlv(1, 0, b"\x22\x00\x05abc")]), "TLV 0x22 runs past the SSL"),
            (v2_header(tlvs=[ssl_tlv(1, 0, tlv(0x22, b"a\0.evil"))]), "0x22 holds a NUL"),
        ],
    )
    def test_invalid_headers(self, data: bytes, message: str) -> None:
        """A header the spec calls invalid is refused, saying what is wrong."""
        assert message in refused(data)

    def test_the_fixed_part_fails_at_once(self) -> None:
        """A wrong signature, version, command, family or short length fails with the byte seen."""
        refused(b"\r\n\r\n\x01")
        refused(SIGNATURE + b"\x11")
        refused(SIGNATURE + b"\x22")
        refused(SIGNATURE + b"\x21\x14")
        refused(SIGNATURE + b"\x21\x11\x00\x0b")

    def test_tlvs_wait_for_the_whole_header(self) -> None:
        """Until the whole header is there, its TLVs are not looked at (the spec: parse no part)."""
        data = v2_header(tlvs=[b"\x20\x00\x01"])
        assert parse(data[:-1]) == len(data)
        refused(data)

    def test_allowed_unassigned_tlvs_kept(self) -> None:
        """Every unknown type is kept raw (0x00, reserved and future ranges, empty values)."""
        kinds = [0x00, 0x06, 0x26, 0xEF, 0xF0, 0xFF]
        header = parse(v2_header(tlvs=[tlv(kind, b"") for kind in kinds]))
        assert isinstance(header, Header)
        assert header.tlvs == tuple((kind, b"") for kind in kinds)


class TestIncremental:
    @pytest.mark.parametrize("data", valid_headers())
    def test_every_prefix_asks_for_more(self, data: bytes) -> None:
        """Every prefix of a valid header returns an int beyond it, and never above the header."""
        for end in range(len(data)):
            need = parse(data[:end])
            assert isinstance(need, int)
            assert end < need <= len(data)
        header = parse(data)
        assert isinstance(header, Header)
        assert header.size == len(data)

    def test_v2_says_its_size(self) -> None:
        """From 16 bytes on, a v2 header's int is its whole size; before, 16."""
        data = full_v2()
        assert parse(data[:3]) == 16
        assert parse(data[:16]) == len(data)

    def test_other_buffers(self) -> None:
        """A bytearray or a memoryview is taken as bytes is."""
        for data in valid_headers():
            for buffer in (bytearray(data), memoryview(data + PAYLOAD)):
                header = parse(buffer)
                assert isinstance(header, Header)
                assert header.size == len(data)

    def test_a_huge_length_asks_and_allocates_nothing(self) -> None:
        """A v2 length of 65535 with 16 bytes sent: the int, 16 + 65535, at no cost."""
        data = SIGNATURE + b"\x21\x11\xff\xff"
        tracemalloc.start()
        try:
            assert parse(data) == proxy.MAX_SIZE == 16 + 65535
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4096


def mutations(rng: random.Random, data: bytes) -> Iterator[bytes]:
    """Yield random changes of `data`: a byte changed, cut, inserted, dropped, a tail added."""
    for _ in range(40):
        buffer = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(buffer) + 1)
            action = rng.randrange(5)
            if action == 0 and at < len(buffer):
                buffer[at] = rng.randrange(256)
            elif action == 1:
                del buffer[at:]
            elif action == 2:
                buffer.insert(at, rng.choice(b"\r\n \x00:.0123456789PROXY\xff"))
            elif action == 3 and at < len(buffer):
                del buffer[at]
            else:
                buffer += rng.randbytes(rng.randrange(8))
        yield bytes(buffer)


def check_parse(data: bytes) -> Header | int | ProxyError:
    """Parse `data` and check what parse promises, whatever the bytes."""
    try:
        result = parse(data)
    except ProxyError as error:
        return error
    if isinstance(result, Header):
        assert 0 < result.size <= len(data)
        again = parse(data[: result.size])
        assert isinstance(again, Header)
        assert again.size == result.size
    else:
        assert result > len(data)
        assert result <= proxy.MAX_SIZE
    return result


class TestFuzz:
    def test_random_bytes(self) -> None:
        """Random bytes, alone or after a signature: ProxyError or an int, nothing else."""
        rng = random.Random(14)  # noqa: S311 (reproducible test data)
        for _ in range(2000):
            start = rng.choice(
                (b"", b"P", b"PROXY ", b"PROXY TCP4 ", SIGNATURE, SIGNATURE + b"\x21")
            )
            check_parse(start + rng.randbytes(rng.randrange(300)))

    def test_mutated_headers(self) -> None:
        """Mutations of valid headers: a ProxyError, an int, or a header within the input."""
        rng = random.Random(15)  # noqa: S311 (reproducible test data)
        for data in valid_headers():
            for mutated in mutations(rng, data + PAYLOAD[: rng.randrange(len(PAYLOAD))]):
                check_parse(mutated)

    def test_an_error_is_final(self) -> None:
        """Once a prefix is refused, every longer input is: no header slips through later."""
        rng = random.Random(16)  # noqa: S311 (reproducible test data)
        for data in valid_headers():
            for mutated in mutations(rng, data):
                verdicts = [check_parse(mutated[:end]) for end in range(len(mutated) + 1)]
                failed = [isinstance(verdict, ProxyError) for verdict in verdicts]
                if True in failed:
                    assert all(failed[failed.index(True) :]), mutated

    def test_a_header_is_final(self) -> None:
        """Bytes after a complete header change nothing: same header, same size."""
        rng = random.Random(17)  # noqa: S311 (reproducible test data)
        for data in valid_headers():
            expected = parse(data)
            assert isinstance(expected, Header)
            for _ in range(50):
                header = parse(data + rng.randbytes(rng.randrange(1, 200)))
                assert isinstance(header, Header)
                assert repr(header) == repr(expected)


@pytest.fixture(params=["socketpair", "tcp"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    """Yield (sender, receiver): a UNIX socket pair, or a TCP loopback connection."""
    if request.param == "socketpair":
        sender, receiver = socket.socketpair()
    else:
        with socket.create_server(("127.0.0.1", 0)) as server:
            sender = socket.create_connection(server.getsockname())
            receiver, _ = server.accept()
    receiver.setblocking(False)
    with sender, receiver:
        yield sender, receiver


def wait_readable(sock: socket.socket) -> None:
    """Wait until `sock` is readable (bounded: the test's own timeout)."""
    select.select([sock], [], [], 10)


def wait_queued(sock: socket.socket, count: int) -> None:
    """Wait until `count` bytes wait in `sock` (SIOCINQ: SO_RCVLOWAT may hide them from poll)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        queued = fcntl.ioctl(sock.fileno(), termios.FIONREAD, bytes(4))
        if int.from_bytes(queued, sys.byteorder) >= count:
            return
        time.sleep(0.001)


class TestReceive:
    @pytest.mark.parametrize("data", valid_headers())
    def test_payload_in_the_same_segment_stays(
        self, pair: tuple[socket.socket, socket.socket], data: bytes
    ) -> None:
        """Header and payload in one send: the header is taken, the payload left whole."""
        sender, receiver = pair
        sender.sendall(data + PAYLOAD)
        wait_readable(receiver)
        header = receive(receiver)
        assert header is not None
        assert header.size == len(data)
        assert receiver.recv(4096) == PAYLOAD

    # Not full_v2: a UNIX socket's sender blocks with a few hundred one-byte messages queued.
    @pytest.mark.parametrize(
        "data",
        [SPEC_V1, v2_header(tlvs=[tlv(1, b"h2"), ssl_tlv(3, 0, tlv(0x22, b"cn"))], crc=True)],
        ids=["v1", "v2"],
    )
    def test_one_byte_at_a_time(
        self, pair: tuple[socket.socket, socket.socket], data: bytes
    ) -> None:
        """Sent a byte at a time: None until the last byte, then the header, then the payload."""
        sender, receiver = pair
        assert receive(receiver) is None
        for end in range(1, len(data)):
            sender.send(data[end - 1 : end])
            wait_queued(receiver, end)
            assert receive(receiver) is None
        sender.sendall(data[-1:] + PAYLOAD)
        wait_queued(receiver, len(data) + len(PAYLOAD))
        header = receive(receiver)
        assert header is not None
        assert header.size == len(data)
        assert receiver.recv(4096) == PAYLOAD
        assert receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1

    def test_tcp_is_not_readable_until_more_comes(self) -> None:
        """Incomplete on TCP, the socket polls readable again only when the bytes needed came."""
        with socket.create_server(("127.0.0.1", 0)) as server:
            sender = socket.create_connection(server.getsockname())
            receiver, _ = server.accept()
        with sender, receiver:
            receiver.setblocking(False)
            data = full_v2()
            sender.sendall(data[:20])
            wait_readable(receiver)
            assert receive(receiver) is None
            assert select.select([receiver], [], [], 0)[0] == []
            sender.sendall(data[20:-1])
            assert select.select([receiver], [], [], 0.05)[0] == []
            sender.sendall(data[-1:])
            wait_readable(receiver)
            assert receive(receiver) is not None
            assert receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1

    def test_invalid_is_refused(self, pair: tuple[socket.socket, socket.socket]) -> None:
        """An invalid header raises ProxyError; nothing is consumed."""
        sender, receiver = pair
        sender.sendall(b"GET / HTTP/1.0\r\n\r\n")
        wait_readable(receiver)
        with pytest.raises(ProxyError, match="first byte 0x47"):
            receive(receiver)
        assert receiver.recv(4096) == b"GET / HTTP/1.0\r\n\r\n"

    def test_invalid_after_incomplete(self, pair: tuple[socket.socket, socket.socket]) -> None:
        """Refused after a None: SO_RCVLOWAT is back to 1, the bytes are all there to read."""
        sender, receiver = pair
        sender.sendall(b"PROXY ")
        wait_queued(receiver, 6)
        assert receive(receiver) is None
        assert receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 15
        sender.sendall(b"HTTP/1.0 200 OK\r\n")
        wait_queued(receiver, 23)
        with pytest.raises(ProxyError, match=r"unknown protocol 'HTTP/1\.0'"):
            receive(receiver)
        assert receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
        receiver.setblocking(True)
        assert receiver.recv(4096) == b"PROXY HTTP/1.0 200 OK\r\n"

    def test_eof_before_anything(self, pair: tuple[socket.socket, socket.socket]) -> None:
        """The peer closes before sending a byte: EOFError."""
        sender, receiver = pair
        sender.shutdown(socket.SHUT_WR)
        wait_readable(receiver)
        with pytest.raises(EOFError):
            receive(receiver)

    def test_eof_within_the_header(self, pair: tuple[socket.socket, socket.socket]) -> None:
        """The peer closes after part of the header: EOFError, not None forever."""
        sender, receiver = pair
        sender.sendall(SPEC_V1[:10])
        sender.shutdown(socket.SHUT_WR)
        wait_readable(receiver)
        with pytest.raises(EOFError, match="after 10 bytes"):
            receive(receiver)

    def test_reset(self) -> None:
        """A reset before the header (TCP RST): OSError."""
        with socket.create_server(("127.0.0.1", 0)) as server:
            sender = socket.create_connection(server.getsockname())
            receiver, _ = server.accept()
        with receiver:
            receiver.setblocking(False)
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            sender.close()
            wait_readable(receiver)
            with pytest.raises(ConnectionResetError):
                receive(receiver)

    def test_a_big_header_is_peeked_in_steps(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        """A header longer than the first peek (a 60,000-byte TLV) is taken whole, payload kept."""
        sender, receiver = pair
        data = v2_header(tlvs=[tlv(0xE1, bytes(60000))], crc=True)
        thread = threading.Thread(target=sender.sendall, args=(data + PAYLOAD,))
        thread.start()
        header = None
        while header is None:
            wait_readable(receiver)
            header = receive(receiver)
        thread.join()
        assert header.size == len(data)
        assert header.tlvs[1] == (0xE1, bytes(60000))
        assert receiver.recv(4096) == PAYLOAD

    def test_a_huge_length_costs_a_small_peek(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        """A v2 length of 65535 with 316 bytes sent: None, with no 64 KiB buffer allocated."""
        sender, receiver = pair
        sender.sendall(SIGNATURE + b"\x21\x11\xff\xff" + bytes(300))
        wait_queued(receiver, 316)
        tracemalloc.start()
        try:
            assert receive(receiver) is None
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 8192


class TestRead:
    def test_header_then_payload(self, pair: tuple[socket.socket, socket.socket]) -> None:
        """A blocking socket: the header, its payload left, the socket's timeout unchanged."""
        sender, receiver = pair
        receiver.settimeout(None)
        sender.sendall(full_v2() + PAYLOAD)
        header = read(receiver, 10)
        assert header.ssl is not None
        assert receiver.gettimeout() is None
        assert receiver.recv(4096) == PAYLOAD
        sender.sendall(SPEC_V1)
        receiver.settimeout(5.0)
        assert read(receiver, 10).size == len(SPEC_V1)
        assert receiver.gettimeout() == 5.0

    def test_byte_by_byte(self, pair: tuple[socket.socket, socket.socket]) -> None:
        """A header sent a byte at a time by another thread is read whole."""
        sender, receiver = pair
        receiver.setblocking(True)
        data = v2_header(tlvs=[tlv(proxy.AUTHORITY, b"example.org")], crc=True)

        def trickle() -> None:
            for byte in data + PAYLOAD:
                sender.send(bytes([byte]))
                time.sleep(0.001)

        thread = threading.Thread(target=trickle)
        thread.start()
        header = read(receiver, 30)
        thread.join()
        assert header.authority == "example.org"
        receiver.settimeout(10)
        received = b""
        while len(received) < len(PAYLOAD):
            received += receiver.recv(4096)
        assert received == PAYLOAD

    def test_never_finished(self, pair: tuple[socket.socket, socket.socket]) -> None:
        """A header never finished: TimeoutError (not a wait forever), the bytes left unread."""
        sender, receiver = pair
        receiver.setblocking(True)
        sender.sendall(SPEC_V1[:-1])
        started = time.thread_time()
        with pytest.raises(TimeoutError):
            read(receiver, 0.3)
        # Waiting is not spinning: a busy loop would take about 0.3 s of CPU (UNIX sockets, where
        # poll ignores SO_RCVLOWAT, included). One-sided: a busy machine only makes it smaller.
        assert time.thread_time() - started < 0.15
        assert receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
        assert receiver.recv(4096) == SPEC_V1[:-1]

    def test_nothing_sent(self, pair: tuple[socket.socket, socket.socket]) -> None:
        """No byte at all: TimeoutError; a zero timeout still looks once."""
        sender, receiver = pair
        receiver.setblocking(True)
        with pytest.raises(TimeoutError):
            read(receiver, 0.05)
        sender.sendall(SPEC_V1)
        wait_readable(receiver)
        assert read(receiver, 0).size == len(SPEC_V1)

    def test_errors_as_receive(self, pair: tuple[socket.socket, socket.socket]) -> None:
        """An invalid header: ProxyError; a close within it: EOFError."""
        sender, receiver = pair
        receiver.setblocking(True)
        sender.sendall(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n")
        with pytest.raises(ProxyError, match="destination port"):
            read(receiver, 10)
        receiver.recv(4096)
        sender.sendall(b"PROXY")
        sender.shutdown(socket.SHUT_WR)
        with pytest.raises(EOFError):
            read(receiver, 10)
