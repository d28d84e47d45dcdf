"""The receiving side of the PROXY protocol, v1 and v2 (run by the forker, and by a pooled worker).

It follows HAProxy's doc/proxy-protocol.txt as a receiver: `parse` reads a
header from the bytes at a connection's start, `receive` takes one from a
non-blocking socket (MSG_PEEK, then exactly the header's bytes, never one
more: what follows is the handler's), `read` from a blocking one within a
time limit. The choices the spec leaves open:
- v1 TCP6 addresses are what inet_pton takes (HAProxy's receiver does the
  same), so RFC 5952's `::ffff:192.0.2.1` too, written back canonical
  (inet_ntop); a v1 line holds printable US-ASCII only, UNKNOWN's ignored
  rest too.
- v2 has one layout whatever the command: the family's address block, then
  TLVs; a LOCAL header's addresses are not decoded. PROXY with AF_UNSPEC is
  served like LOCAL (the real endpoints).
- A UNIX address is the path up to its first NUL (os.fsdecode); one that
  starts with a NUL is abstract, written `@name` (trailing NULs dropped), as
  sockd logs UNIX peers.
- Of a TLV given twice, the first counts (as in HAProxy); all stay in
  `tlvs`. Two CRC32C TLVs are an error (which one covers what is undefined).
- AUTHORITY must be UTF-8; the SSL strings are decoded with U+FFFD for bad
  bytes (a certificate's CN may be Latin-1); either holding a NUL is an
  error (a classic CN spoof, and no environment variable can carry it).
- v2 TLVs are checked once the whole header is there (the spec: parse
  nothing before the block is complete); v1 fields and the v2 fixed part
  fail as soon as a byte is wrong.
"""

from __future__ import annotations

import os
import select
import socket
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Address = tuple[str, int] | str | None
    Data = bytes | bytearray | memoryview

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # v2's first 12 bytes
V1_MAX = 107  # the longest v1 line, CRLF included
MAX_SIZE = 16 + 0xFFFF  # the longest v2 header: the most receive() ever peeks
_PEEK = 256  # receive()'s first peek: any v1 line, a v2 header with a few TLVs
_NAP = 0.01  # read()'s pause when woken without a new byte (see read)
# The v2 family and transport byte: (family, datagram, bytes of the address block).
_FAMILIES = {
    0x00: (socket.AF_UNSPEC, False, 0),
    0x11: (socket.AF_INET, False, 12),
    0x12: (socket.AF_INET, True, 12),
    0x21: (socket.AF_INET6, False, 36),
    0x22: (socket.AF_INET6, True, 36),
    0x31: (socket.AF_UNIX, False, 216),
    0x32: (socket.AF_UNIX, True, 216),
}
ALPN, AUTHORITY, CRC32C, NOOP, UNIQUE_ID, SSL, NETNS = 0x01, 0x02, 0x03, 0x04, 0x05, 0x20, 0x30
_SSL_TEXT = {0x21: "version", 0x22: "cn", 0x23: "cipher", 0x24: "sig_alg", 0x25: "key_alg"}
_CERT = 0x02 | 0x04  # PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS
_PRINTABLE = bytes(range(0x20, 0x7F))
_HEX6 = b"0123456789abcdefABCDEF:."
_COMMANDS = (0x20, 0x21)  # v2 LOCAL, v2 PROXY
_KEYWORDS = (b"TCP4", b"TCP6", b"UNKNOWN")
_FIELDS = ("source address", "destination address", "source port", "destination port")
# Plain ints, not the socket module's flags: `|` of two IntFlag members runs enum's
# Python code, per connection.
_NOW = int(socket.MSG_DONTWAIT)
_PEEK_NOW = int(socket.MSG_PEEK) | _NOW
_SOL_SOCKET, _SO_RCVLOWAT = int(socket.SOL_SOCKET), int(socket.SO_RCVLOWAT)
_crc_table: list[int] = []  # made for the first CRC32C TLV: the forker stays small


class ProxyError(Exception):
    """Not a valid PROXY header: the message names what is wrong."""


class Ssl:
    """The SSL TLV: the client's flags, whether its certificate verified, and the sub-TLVs' text."""

    __slots__ = ("cipher", "client", "cn", "key_alg", "sig_alg", "verified", "verify", "version")

    def __init__(self, client: int, verify: int) -> None:
        self.client = client  # PP2_CLIENT_SSL 1, PP2_CLIENT_CERT_CONN 2, PP2_CLIENT_CERT_SESS 4
        self.verify = verify  # as sent: 0 when verified, or when no certificate came (HAProxy)
        # HAProxy sends 0 when the client sent no certificate: a certificate flag must be set too.
        self.verified = verify == 0 and bool(client & _CERT)
        self.version: str | None = None
        self.cn: str | None = None
        self.cipher: str | None = None
        self.sig_alg: str | None = None
        self.key_alg: str | None = None

    def __repr__(self) -> str:
        return _repr(self)


class Header:
    """A PROXY header: the client and the address it reached, as the proxy saw them, and TLVs."""

    __slots__ = (
        "alpn",
        "authority",
        "datagram",
        "destination",
        "family",
        "local",
        "size",
        "source",
        "ssl",
        "tlvs",
        "unique_id",
        "version",
    )

    def __init__(  # noqa: PLR0913 (one argument per field of the header)
        self,
        version: int,
        size: int,
        family: int = socket.AF_UNSPEC,
        source: Address = None,
        destination: Address = None,
        *,
        datagram: bool = False,
    ) -> None:
        self.version = version  # 1 or 2
        self.size = size  # bytes the header took on the wire
        self.family = family  # as sent (AF_UNSPEC for v1 UNKNOWN)
        self.datagram = datagram  # v2 DGRAM
        self.source = source  # (address, port), a UNIX path, or None: local
        self.destination = destination
        self.local = source is None  # v2 LOCAL or AF_UNSPEC, v1 UNKNOWN: the real endpoints
        self.tlvs: tuple[tuple[int, bytes], ...] = ()  # every TLV as received, in order
        self.alpn: bytes | None = None
        self.authority: str | None = None
        self.unique_id: bytes | None = None
        self.ssl: Ssl | None = None

    def __repr__(self) -> str:
        return _repr(self)


def _repr(obj: Header | Ssl) -> str:
    """Return `obj` as its class name and every slot's value."""
    fields = ", ".join(f"{name}={getattr(obj, name)!r}" for name in obj.__slots__)
    return f"{type(obj).__name__}({fields})"


def parse(data: Data) -> Header | int:
    """Parse the header at the start of `data` (bytes from the connection's start).

    Returns:
        The Header (its `size` bytes of `data`), or while the bytes seen may
        still start one, the least total length a complete header needs given
        them (more than len(data)): v2 16, then 16 + its length; v1 one byte
        more (at least 15).

    Raises:
        ProxyError: the bytes seen cannot start a valid header (at once: it
            never waits for more when it can tell).
    """
    if not isinstance(data, bytes):
        data = bytes(data[:MAX_SIZE])
    if not data:
        return 15  # "PROXY UNKNOWN\r\n", the shortest header
    if data[0] == 0x50:  # P
        return _v1(data)
    if data[0] == 0x0D:  # CR
        return _v2(data)
    raise ProxyError(f"not a PROXY header: first byte {data[0]:#04x}")


def _v1(data: bytes) -> Header | int:
    """Parse a v1 line, or say how far it may go (see parse)."""
    n = len(data)
    end = data.find(b"\r", 0, V1_MAX - 1)  # the CR of a CRLF ending by byte 107
    if end < 0:
        if n >= V1_MAX:
            raise ProxyError("v1: no CRLF in the first 107 bytes")
        line = data
    else:
        if end < n - 1 and data[end + 1] != 0x0A:
            raise ProxyError("v1: a CR not followed by LF")
        line = data[:end]
    bad = line.translate(None, _PRINTABLE)
    if bad:
        raise ProxyError(f"v1: byte {bad[0]:#04x} in the line")
    fields = line.split(b" ")
    # fields[:whole] are complete: all once a CR came, the line's end.
    checked = _v1_fields(fields, len(fields) if end >= 0 else len(fields) - 1)
    if not 0 <= end < n - 1:
        return max(n + 1, 15)
    if checked is None:
        return Header(1, end + 2)  # UNKNOWN: the rest ignored, as the spec says
    family, source, destination = checked
    return Header(1, end + 2, family, source, destination)


def _v1_fields(fields: list[bytes], whole: int) -> tuple[int, Address, Address] | None:
    """Check a v1 line's fields, the first `whole` complete, the next begun (if any).

    Returns:
        Once all are complete, the family and the addresses (None: UNKNOWN).
    """
    count = len(fields)
    if not (fields[0] == b"PROXY" if whole else b"PROXY".startswith(fields[0])):
        raise ProxyError("v1: the line does not start with 'PROXY '")
    if count == 1:
        if whole:
            raise ProxyError("v1: no protocol")
        return None
    keyword = fields[1]
    if not (keyword in _KEYWORDS if whole > 1 else any(k.startswith(keyword) for k in _KEYWORDS)):
        raise ProxyError(f"v1: unknown protocol {keyword.decode()!r}")
    if whole < 2 or keyword == b"UNKNOWN":
        return None
    _v1_addresses(fields, whole, _ipv4 if keyword == b"TCP4" else _ipv6)
    if count > 6:
        raise ProxyError(f"v1: more than 4 fields after {keyword.decode()}")
    if whole < 6:
        if whole == count:
            raise ProxyError(f"v1: {keyword.decode()} needs 4 fields after it, not {count - 2}")
        return None
    source, destination = fields[2].decode(), fields[3].decode()
    if keyword == b"TCP4":
        return socket.AF_INET, (source, int(fields[4])), (destination, int(fields[5]))
    # Written canonical, as v2's are.
    source = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, source))
    destination = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, destination))
    return socket.AF_INET6, (source, int(fields[4])), (destination, int(fields[5]))


def _v1_addresses(fields: list[bytes], whole: int, address: Callable[[bytes, bool], bool]) -> None:
    """Check a TCP4 or TCP6 line's addresses and ports, those up to the sixth field."""
    for index in range(2, min(len(fields), 6)):
        field = fields[index]
        if not (address if index < 4 else _port)(field, index < whole):
            raise ProxyError(f"v1: bad {_FIELDS[index - 2]} {field.decode()!r}")


def _ipv4(field: bytes, whole: bool) -> bool:
    """Say whether `field` is a dotted quad (`whole`), or may start one: no leading zeros."""
    parts = field.split(b".")
    if len(parts) > 4 or (whole and len(parts) < 4):
        return False
    last = len(parts) - 1
    for index, part in enumerate(parts):
        if not part:
            if whole or index < last:
                return False
        elif (
            not part.isdigit()
            or len(part) > 3
            or (part[0] == 0x30 and len(part) > 1)
            or int(part) > 255
        ):
            return False
    return True


def _ipv6(field: bytes, whole: bool) -> bool:
    """Say whether `field` is an IPv6 address inet_pton takes (`whole`), or may start one."""
    if len(field) > 45 or field.translate(None, _HEX6):  # 45: INET6_ADDRSTRLEN - 1
        return False
    if not whole:
        return True
    try:
        socket.inet_pton(socket.AF_INET6, field.decode())
    except OSError:
        return False
    return True


def _port(field: bytes, whole: bool) -> bool:
    """Say whether `field` is a port 0..65535 in decimal (`whole`), or may start one."""
    if not field:
        return not whole
    if not field.isdigit() or len(field) > 5 or (field[0] == 0x30 and len(field) > 1):
        return False
    return int(field) <= 0xFFFF


def _v2(data: bytes) -> Header | int:
    """Parse a v2 header, or say how far it goes (see parse)."""
    n = len(data)
    if n < 14 or data[:12] != SIGNATURE or data[12] not in _COMMANDS or data[13] not in _FAMILIES:
        _v2_fixed(data[:14])  # a part, or wrong: which part (a valid one is checked inline)
    if n < 16:
        return 16
    family, datagram, block = _FAMILIES[data[13]]
    size = 16 + (data[14] << 8 | data[15])
    if size < 16 + block:
        raise ProxyError(f"v2: length {size - 16} is under family {data[13]:#04x}'s {block}")
    if n < size:
        return size
    if data[12] & 0x0F == 0 or family == socket.AF_UNSPEC:
        header = Header(2, size, family, datagram=datagram)
    else:
        header = Header(2, size, family, *_addresses(data, family), datagram=datagram)
    if size > 16 + block:
        _tlvs(header, data[:size], 16 + block)
    return header


def _v2_fixed(data: bytes) -> None:
    """Check a v2 header's signature, version, command, family and transport: as far as seen."""
    if data[:12] != SIGNATURE[: len(data)]:
        raise ProxyError("v2: bad signature")
    if len(data) > 12:
        if data[12] >> 4 != 2:
            raise ProxyError(f"v2: version {data[12] >> 4}, not 2")
        if data[12] & 0x0F > 1:
            raise ProxyError(f"v2: unknown command {data[12] & 0x0F}")
    if len(data) > 13 and data[13] not in _FAMILIES:
        raise ProxyError(f"v2: unknown family and transport {data[13]:#04x}")


def _addresses(data: bytes, family: int) -> tuple[Address, Address]:
    """Return a v2 header's source and destination, from its address block."""
    if family == socket.AF_INET:
        return (
            (socket.inet_ntop(family, data[16:20]), data[24] << 8 | data[25]),
            (socket.inet_ntop(family, data[20:24]), data[26] << 8 | data[27]),
        )
    if family == socket.AF_INET6:
        return (
            (socket.inet_ntop(family, data[16:32]), data[48] << 8 | data[49]),
            (socket.inet_ntop(family, data[32:48]), data[50] << 8 | data[51]),
        )
    return _unix(data[16:124]), _unix(data[124:232])


def _unix(field: bytes) -> str:
    """Return a UNIX address field as a path, `@name` if abstract, '' if unnamed."""
    if field[0] == 0:
        name = field.rstrip(b"\0")
        return "@" + os.fsdecode(name[1:]) if name else ""
    return os.fsdecode(field[: field.find(b"\0") if 0 in field else None])


def _tlvs(header: Header, data: bytes, at: int) -> None:
    """Set `header`'s TLVs from data[at:] (data is the whole header)."""
    spans = _split(data, at, "the header")
    header.tlvs = tlvs = tuple((kind, data[start:end]) for kind, start, end in spans)
    crcs = [(start, end) for kind, start, end in spans if kind == CRC32C]
    if crcs:
        _check(data, crcs)
    for kind, value in tlvs:
        if kind == ALPN:
            header.alpn = value if header.alpn is None else header.alpn
        elif kind == AUTHORITY and header.authority is None:
            try:
                header.authority = _text(value.decode(), "AUTHORITY")
            except UnicodeDecodeError:
                raise ProxyError("v2: AUTHORITY is not UTF-8") from None
        elif kind == UNIQUE_ID and header.unique_id is None:
            if len(value) > 128:
                raise ProxyError(f"v2: UNIQUE_ID of {len(value)} bytes, over 128")
            header.unique_id = value
        elif kind == SSL and header.ssl is None:
            header.ssl = _ssl(value)


def _check(data: bytes, crcs: list[tuple[int, int]]) -> None:
    """Check the header's CRC32C, whose value is at data[start:end]: computed with it zeroed."""
    if len(crcs) > 1:
        raise ProxyError("v2: two CRC32C TLVs")
    start, end = crcs[0]
    if end - start != 4:
        raise ProxyError(f"v2: CRC32C TLV of {end - start} bytes, not 4")
    crc = crc32c(data[end:], crc32c(b"\0\0\0\0", crc32c(data[:start])))
    if crc != int.from_bytes(data[start:end], "big"):
        raise ProxyError("v2: wrong CRC32C")


def _split(data: bytes, at: int, within: str) -> list[tuple[int, int, int]]:
    """Return the TLVs from data[at:] to its end, bounds checked: (type, start, end) of values."""
    spans = []
    size = len(data)
    while at < size:
        if at + 3 > size:
            raise ProxyError(f"v2: a TLV's type and length run past {within}'s end")
        kind = data[at]
        start, at = at + 3, at + 3 + (data[at + 1] << 8 | data[at + 2])
        if at > size:
            raise ProxyError(f"v2: TLV {kind:#04x} runs past {within}'s end")
        spans.append((kind, start, at))
    return spans


def _ssl(value: bytes) -> Ssl:
    """Return the SSL TLV's value decoded: client flags, verify, then sub-TLVs."""
    if len(value) < 5:
        raise ProxyError(f"v2: SSL TLV of {len(value)} bytes, under its 5 fixed ones")
    ssl = Ssl(value[0], int.from_bytes(value[1:5], "big"))
    for kind, start, end in _split(value, 5, "the SSL TLV"):
        name = _SSL_TEXT.get(kind)
        if name and getattr(ssl, name) is None:
            text = value[start:end].decode(errors="replace")
            setattr(ssl, name, _text(text, f"SSL sub-TLV {kind:#04x}"))
    return ssl


def _text(text: str, what: str) -> str:
    """Return `text`, a TLV's decoded value, unless it holds a NUL."""
    if "\0" in text:
        raise ProxyError(f"v2: {what} holds a NUL")
    return text


def crc32c(data: bytes, crc: int = 0) -> int:
    """Return the CRC32C (Castagnoli, RFC 4960 appendix B) of `data`, going on from `crc`."""
    table = _crc_table
    if not table:
        for byte in range(256):
            value = byte
            for _ in range(8):
                value = (value >> 1) ^ 0x82F63B78 if value & 1 else value >> 1
            table.append(value)
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def receive(sock: socket.socket) -> Header | None:
    """Take the header from `sock` (non-blocking, or readable) if it is all there.

    It peeks at what came (MSG_PEEK), and once the header is complete
    consumes exactly its bytes: what follows stays for the handler.
    Incomplete, it raises SO_RCVLOWAT to the least total the header needs,
    so that poll or epoll say a TCP socket is readable only once more came
    (or it closed): call again then. It puts SO_RCVLOWAT back to 1 when it
    returns the header or raises ProxyError; a caller that gives up on an
    incomplete header and still reads must do it (a blocking recv would
    wait for that many bytes). A UNIX socket's poll ignores SO_RCVLOWAT:
    readable while any byte waits.

    Returns:
        The header, or None while it is incomplete.

    Raises:
        ProxyError: not a valid header.
        EOFError: the peer closed before the header was complete.
        OSError: the socket failed (ECONNRESET...).
    """
    result = receive_seen(sock)
    return None if isinstance(result, int) else result


def receive_seen(sock: socket.socket) -> Header | int:
    """Return the header from `sock` (as `receive` does), or the bytes seen while incomplete.

    The forker's way: one call less per connection than `receive`.
    """
    # The first peek takes _PEEK bytes; a longer header's each following one
    # twice as much, up to its size: at most MAX_SIZE (16 + 65535) bytes are
    # peeked, and never much more than twice what is queued (a v2 length of
    # 65535 with 16 bytes sent costs a 256-byte peek).
    ask = _PEEK
    while True:
        try:
            data = sock.recv(ask, _PEEK_NOW)
        except BlockingIOError:
            return 0
        if not data:
            raise EOFError("the peer closed before a PROXY header")
        first = data[0]  # parse's dispatch, inline: a call less per connection
        try:
            result = _v2(data) if first == 0x0D else _v1(data) if first == 0x50 else parse(data)
        except ProxyError:
            _lowat(sock, 1)  # an earlier call may have raised it: the caller may still write
            raise
        if not isinstance(result, int):
            break
        if len(data) < ask:
            # A FIN after the partial header leaves the socket readable forever: see it now.
            poller = select.poll()
            poller.register(sock, select.POLLRDHUP)
            if poller.poll(0):
                raise EOFError(f"the peer closed after {len(data)} bytes of a PROXY header")
            _lowat(sock, result)
            return len(data)
        ask = min(result, ask * 2)
    left = result.size
    while left:
        taken = len(sock.recv(left, _NOW))
        if not taken:
            raise EOFError("the peer closed within the PROXY header")
        left -= taken
    sock.setsockopt(_SOL_SOCKET, _SO_RCVLOWAT, 1)  # (_lowat, inline: a call less)
    return result


def _lowat(sock: socket.socket, count: int) -> None:
    """Set `sock`'s SO_RCVLOWAT: poll says it is readable once `count` bytes wait (TCP)."""
    sock.setsockopt(_SOL_SOCKET, _SO_RCVLOWAT, count)


def read(sock: socket.socket, timeout: float) -> Header:
    """Take the header from `sock` (blocking), waiting for it up to `timeout` seconds in all.

    As receive, polling between peeks; the socket's own timeout is left as
    it was. A poll that wakes it without a new byte (a UNIX socket, which
    ignores SO_RCVLOWAT) is followed by a short pause, not a busy loop.

    Raises:
        TimeoutError: the header was not complete in time.
        ProxyError, EOFError, OSError: as receive.
    """
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    seen = -1
    while True:
        left = deadline - time.monotonic()
        if poller.poll(int(left * 1000) + 1 if left > 0 else 0):
            result = receive_seen(sock)
            if not isinstance(result, int):
                return result
            if result == seen and left > 0:
                time.sleep(min(_NAP, left))
            seen = result
        if left <= 0:
            _lowat(sock, 1)  # as it was, for whatever reads next (a message saying why, say)
            raise TimeoutError(f"no complete PROXY header within {timeout} s")
