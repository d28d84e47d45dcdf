"""Who may connect, asked by the forker and pooled workers: rules, caps, rates, denial logs."""

from __future__ import annotations

from _socket import AF_INET as _AF_INET
from _socket import AF_INET6 as _AF_INET6
from _socket import inet_ntop as _inet_ntop
from _socket import inet_pton as _inet_pton
from collections import OrderedDict  # loaded in the forker already (socketserver, selectors)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Iterable
    from typing import Any

    from sockd.spec import Limits

    IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AccessRules:
    """A service's `allow` and `deny` networks: deny wins; an empty allow admits everyone.

    Rules apply to TCP clients; who may connect to a UNIX socket is decided by
    the socket file's mode (`unix_mode`). Networks are kept as masked integers,
    matched without the ipaddress module (half a megabyte the forker, and so
    every fork, would carry).

    Each list is a `Networks` table: a set of network prefixes per prefix
    length, probed from the longest length to the shortest. A check costs one
    set lookup per distinct length in the list (at most 33 for IPv4, 129 for
    IPv6), however long the list; the network reported is the most specific one
    that matches.
    """

    __slots__ = ("active", "allow", "deny")

    def __init__(
        self, allow: Iterable[str | IPNetwork] = (), deny: Iterable[str | IPNetwork] = ()
    ) -> None:
        """Take networks, or their text (`10.0.0.0/8`, `::1`), as the config validated them."""
        self.allow = Networks(allow)
        self.deny = Networks(deny)
        self.active = bool(self.allow or self.deny)  # False: everyone is admitted

    def refusal(self, client_address: object) -> str | None:
        """Return why `client_address` is refused, or None to admit it."""
        if not isinstance(client_address, tuple) or not self.active:
            return None
        family, address = _address(client_address[0])
        if self.deny:
            network = self.deny.match(family, address)
            if network is not None:
                return f"deny {network}"
        if self.allow and self.allow.match(family, address) is None:
            return "not in allow"
        return None


def trusted(networks: Networks, proxy_address: object) -> bool:
    """Whether a proxy at `proxy_address` may send PROXY headers (a UNIX peer always may).

    On a UNIX listener, the socket file's mode decides who may connect at all.
    """
    if not isinstance(proxy_address, tuple):
        return True
    return networks.match(*_address(proxy_address[0])) is not None


_V4_MAPPED = bytes(10) + b"\xff\xff"


class Networks:
    """A list of networks, matched in a time that does not grow with the list.

    For each address family, a tuple of (shift, prefixes), longest prefix
    first: an address is inside when `address >> shift` is one of the prefixes
    (the network's address shifted alike; shift is 32 or 128 minus the length).
    """

    __slots__ = ("count", "v4", "v6")

    def __init__(self, networks: Iterable[str | IPNetwork] = ()) -> None:
        """Take networks, or their text (`10.0.0.0/8`, `::1`), as the config validated them."""
        tables: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        self.count = 0
        for network in networks:
            family, address, length = _network(str(network))
            shift = (32 if family == 4 else 128) - length
            tables[family].setdefault(shift, set()).add(address >> shift)
            self.count += 1
        self.v4 = tuple(sorted(tables[4].items()))
        self.v6 = tuple(sorted(tables[6].items()))

    def __bool__(self) -> bool:
        return bool(self.count)

    def match(self, family: int, address: int) -> str | None:
        """Return the most specific network that holds the address (`10.0.0.0/8`), or None."""
        for shift, prefixes in self.v4 if family == 4 else self.v6:
            prefix = address >> shift
            if prefix in prefixes:
                return _network_text(family, prefix << shift, shift)
        return None


def _network(text: str) -> tuple[int, int, int]:
    """Parse `ADDRESS[/PREFIX]` (the config has checked it): family, address, prefix length.

    An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is the IPv4 network.
    """
    host, _, prefix = text.partition("/")
    if ":" not in host:
        return 4, int.from_bytes(_inet_pton(_AF_INET, host), "big"), int(prefix or 32)
    packed = _inet_pton(_AF_INET6, host)
    length = int(prefix or 128)
    if packed[:12] == _V4_MAPPED and length >= 96:
        return 4, int.from_bytes(packed[12:], "big"), length - 96
    return 6, int.from_bytes(packed, "big"), length


def _network_text(family: int, network: int, shift: int) -> str:
    bits, af = (32, _AF_INET) if family == 4 else (128, _AF_INET6)
    return f"{_inet_ntop(af, network.to_bytes(bits // 8, 'big'))}/{bits - shift}"


def _address(host: str) -> tuple[int, int]:
    """Return (4 or 6, the address as an integer); ::ffff:a.b.c.d is IPv4."""
    if ":" not in host:
        return 4, int.from_bytes(_inet_pton(_AF_INET, host), "big")
    if "%" in host:  # a link-local client's scope (fe80::1%eth0)
        host = host.partition("%")[0]
    packed = _inet_pton(_AF_INET6, host)
    if packed[:12] == _V4_MAPPED:
        return 4, int.from_bytes(packed[12:], "big")
    return 6, int.from_bytes(packed, "big")


def _masked_int(value: int, bits: int, prefix: int) -> int:
    return value >> (bits - prefix) << (bits - prefix)


def source_key(client_address: object, prefix_v4: int, prefix_v6: int) -> tuple[int, int] | None:
    """Return the source group of a TCP client: (4 or 6, address masked to its prefix).

    An IPv4 address mapped into IPv6 (::ffff:a.b.c.d) counts as IPv4. UNIX
    peers have no source (None): per-source limits do not apply to them.
    """
    if not isinstance(client_address, tuple):
        return None
    family, address = _address(client_address[0])
    if family == 4:
        return (4, _masked_int(address, 32, prefix_v4))
    return (6, _masked_int(address, 128, prefix_v6))


def source_text(key: tuple[int, int], prefix_v4: int, prefix_v6: int) -> str:
    """Render a source group: `192.0.2.7`, `192.0.2.0/24` or `2001:db8:1:2::/64`."""
    family, value = key
    bits, prefix, af = (32, prefix_v4, _AF_INET) if family == 4 else (128, prefix_v6, _AF_INET6)
    text = _inet_ntop(af, value.to_bytes(bits // 8, "big"))
    return text if prefix == bits else f"{text}/{prefix}"


class Bucket:
    """A token bucket: `rate` tokens a second, at most `burst`; each admission takes one."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.stamp = now

    def ready(self, rate: float, burst: float, now: float) -> bool:
        """Refill for the time gone by; tell whether a token is there (`take` takes it)."""
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        return self.tokens >= 1.0

    def take(self) -> None:
        """Take the token `ready` saw."""
        self.tokens -= 1.0

    def full(self, rate: float, burst: float, now: float) -> bool:
        """Tell whether the bucket has refilled (it can then be forgotten)."""
        return self.tokens + (now - self.stamp) * rate >= burst


MAX_SOURCE_BUCKETS = 65536  # per service; past it, the least recently used is dropped
EXPIRE_PER_SOURCE = 2  # refilled buckets dropped (oldest first) when a new source comes


class Admission:
    """Per-source counts and rate limits of one service, kept across reloads.

    `limits` is the service's `sockd.spec.Limits`; it may change on reload
    (`apply`). Without any limit (`limited` False) nothing is counted: the
    forker then skips admission altogether.
    """

    __slots__ = ("bucket", "limited", "limits", "open", "source_buckets")

    def __init__(self, limits: Limits) -> None:
        self.apply(limits)
        self.open: dict[tuple[int, int], int] = {}  # source -> connections open now
        self.bucket: Bucket | None = None
        # Least recently used first: refilled buckets are found at the front.
        self.source_buckets: OrderedDict[tuple[int, int], Bucket] = OrderedDict()

    def apply(self, limits: Limits) -> None:
        """Take new limits (the caller recounts the connections open, see `Shared.admission`)."""
        self.limits = limits
        # The limits that need counting; without them a service admits without looking.
        self.limited = any(
            limit is not None for limit in (limits.per_source, limits.per_source_rate, limits.rate)
        )

    def key(self, client_address: object) -> tuple[int, int] | None:
        """Return the client's source group under the current prefixes."""
        limits = self.limits
        return source_key(client_address, limits.source_prefix_v4, limits.source_prefix_v6)

    def refusal(self, key: tuple[int, int] | None, now: float) -> str | None:
        """Return which limit refuses a connection from `key` now, or None (tokens taken).

        A refused connection takes no token from any bucket.
        """
        limits = self.limits
        per_source = limits.per_source
        if per_source is not None and key is not None and self.open.get(key, 0) >= per_source:
            return "per_source"
        source_bucket = None
        rate = limits.per_source_rate
        if rate is not None and key is not None:
            burst = limits.per_source_burst or max(1.0, rate)
            buckets = self.source_buckets
            source_bucket = buckets.get(key)
            if source_bucket is None:
                self._expire(rate, burst, now, EXPIRE_PER_SOURCE)
                if len(buckets) >= MAX_SOURCE_BUCKETS:
                    buckets.popitem(last=False)  # the least recently used, refilled or not
                source_bucket = buckets[key] = Bucket(burst, now)
            else:
                buckets.move_to_end(key)  # `ready` stamps it: the order stays by last use
            if not source_bucket.ready(rate, burst, now):
                return "per_source_rate"
        rate = limits.rate
        if rate is not None:
            burst = limits.burst or max(1.0, rate)
            if self.bucket is None:
                self.bucket = Bucket(burst, now)
            if not self.bucket.ready(rate, burst, now):
                return "rate"
            self.bucket.take()
        if source_bucket is not None:
            source_bucket.take()
        return None

    def opened(self, key: tuple[int, int] | None) -> None:
        """Count a connection now served."""
        if key is not None:
            self.open[key] = self.open.get(key, 0) + 1

    def closed(self, key: tuple[int, int] | None) -> None:
        """Count a connection that ended."""
        if key is not None:
            count = self.open.pop(key, 1) - 1
            if count:
                self.open[key] = count

    def forget_full(self, now: float) -> None:
        """Drop the per-source buckets that have refilled (they would be made anew, full).

        Buckets are in order of last use, so the refilled ones are looked for
        from the front, up to the first that has not refilled: each bucket is
        looked at once when it is dropped, plus one look per call.
        """
        rate = self.limits.per_source_rate
        if rate is None:
            self.source_buckets = OrderedDict()
            return
        burst = self.limits.per_source_burst or max(1.0, rate)
        buckets = self.source_buckets
        if self._expire(rate, burst, now, len(buckets)) > len(buckets):
            # A table never shrinks: copy it so the memory goes back (the forker's
            # size is the cost of every fork).
            self.source_buckets = OrderedDict(buckets)

    def _expire(self, rate: float, burst: float, now: float, limit: int) -> int:
        """Drop up to `limit` refilled buckets, least recently used first; return how many."""
        buckets = self.source_buckets
        dropped = 0
        while dropped < limit and buckets:
            key = next(iter(buckets))
            if not buckets[key].full(rate, burst, now):
                break
            del buckets[key]
            dropped += 1
        return dropped


DENIAL_WINDOW = 10.0  # seconds over which repeated denials are summed up
MAX_DENIAL_SOURCES = 20  # sources logged one by one per window; the rest are summed


class Denials:
    """Bounded logging of refused connections.

    The first refusal of a (service, reason, source) in a window is logged at
    once; the others are counted and logged as one `connections_denied` line
    per source at the end of the window. Past MAX_DENIAL_SOURCES sources in a
    window, refusals are summed per service and reason. However large a flood,
    a window logs at most 2 x MAX_DENIAL_SOURCES lines, plus one per service
    and reason. Drops only counted (`count`) add one line per service and
    reason per window.
    """

    __slots__ = ("counts", "overflow", "window_end")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        self.overflow: dict[tuple[str, str], int] = {}
        self.window_end = 0.0

    def first(self, service: str, reason: str, source: str, now: float) -> bool:
        """Count a refusal; True when it is to be logged now, on its own."""
        if not self.window_end:
            self.window_end = now + DENIAL_WINDOW
        key = (service, reason, source)
        count = self.counts.get(key)
        if count is not None:
            self.counts[key] = count + 1
            return False
        if len(self.counts) < MAX_DENIAL_SOURCES:
            self.counts[key] = 0
            return True
        self.overflow[service, reason] = self.overflow.get((service, reason), 0) + 1
        return False

    def count(self, service: str, reason: str, now: float) -> None:
        """Count a connection dropped for `reason`, to be logged only in the window's summary.

        For drops not worth a line each (a peer that reset before it was
        served): one summary per service and reason per window, source "all".
        """
        if not self.window_end:
            self.window_end = now + DENIAL_WINDOW
        key = (service, reason, "all")
        self.counts[key] = self.counts.get(key, 0) + 1

    def due(self, now: float) -> list[dict[str, Any]]:
        """At the end of a window, return the summaries to log (and start afresh)."""
        if not self.window_end or now < self.window_end:
            return []
        summaries = [
            {"service": service, "reason": reason, "source": source, "count": count}
            for (service, reason, source), count in self.counts.items()
            if count
        ]
        summaries += [
            {"service": service, "reason": reason, "source": "others", "count": count}
            for (service, reason), count in self.overflow.items()
        ]
        for summary in summaries:
            summary["seconds"] = DENIAL_WINDOW
        self.counts.clear()
        self.overflow.clear()
        self.window_end = 0.0
        return summaries
