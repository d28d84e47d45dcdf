"""PROXY protocol headers as a proxy sends them (HAProxy's doc/proxy-protocol.txt)."""

from __future__ import annotations

import socket

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
LOCAL, PROXY = 0x20, 0x21  # version 2 and its command
TCP4, TCP6, UNIX_STREAM, UNSPEC = 0x11, 0x21, 0x31, 0x00
ALPN, AUTHORITY, CRC32C, NOOP, UNIQUE_ID, SSL = 0x01, 0x02, 0x03, 0x04, 0x05, 0x20
SSL_VERSION, SSL_CN, SSL_CIPHER = 0x21, 0x22, 0x23


def v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """Return a v1 header for a TCP connection (TCP4 or TCP6, from the address)."""
    kind = "TCP6" if ":" in source[0] else "TCP4"
    line = f"PROXY {kind} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
    return line.encode()


def tlv(kind: int, value: bytes) -> bytes:
    """Return one TLV: its type, 2-byte length, value."""
    return bytes((kind,)) + len(value).to_bytes(2, "big") + value


def ssl_tlv(version: str, cn: str, cipher: str, *, client: int = 0x07, verify: int = 0) -> bytes:
    """Return a PP2_TYPE_SSL TLV: client flags, verify result, sub-TLVs."""
    subs = tlv(SSL_VERSION, version.encode()) + tlv(SSL_CN, cn.encode())
    subs += tlv(SSL_CIPHER, cipher.encode())
    return tlv(SSL, bytes((client,)) + verify.to_bytes(4, "big") + subs)


def v2(  # noqa: PLR0913 (each a part of the header)
    source: tuple[str, int] | None = None,
    destination: tuple[str, int] | None = None,
    tlvs: bytes = b"",
    *,
    command: int = PROXY,
    family: int | None = None,
    crc: bool = False,
    block: bytes = b"",
) -> bytes:
    """Return a v2 header: PROXY with the addresses (IPv4 or IPv6, or `block`), or LOCAL without."""
    if family is None:
        family = UNSPEC if source is None else TCP6 if ":" in source[0] else TCP4
    if source is not None and destination is not None:
        af = socket.AF_INET6 if family == TCP6 else socket.AF_INET
        block = socket.inet_pton(af, source[0]) + socket.inet_pton(af, destination[0])
        block += source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
    if crc:
        tlvs += tlv(CRC32C, bytes(4))
    length = len(block) + len(tlvs)
    header = SIGNATURE + bytes((command, family)) + length.to_bytes(2, "big") + block + tlvs
    if crc:
        header = header[:-4] + crc32c(header).to_bytes(4, "big")
    return header


def unix_block(source: bytes, destination: bytes) -> bytes:
    """Return v2's address block of AF_UNIX: two paths of 108 bytes, NUL-padded."""
    return source.ljust(108, b"\0") + destination.ljust(108, b"\0")


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bit by bit: slow, and plainly right."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF
