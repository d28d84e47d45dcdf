"""Tests of sockd.forker.typecache: a child's lookups hit what the forker cached, copy nothing."""

from __future__ import annotations

import os
import socketserver
import subprocess
import sys
import textwrap

import pytest

from sockd.forker import typecache


class Handler(socketserver.BaseRequestHandler):
    greeting = b"hello"

    def handle(self) -> None:
        self.request.sendall(self.greeting + self.suffix)  # type: ignore[attr-defined]

    @classmethod
    def make(cls) -> list[str]:
        return [name.upper() for name in (cls.nested_name,)]  # type: ignore[attr-defined]


class Meta(type):
    def __getattr__(cls, name: str) -> object:
        raise RuntimeError(name)


class Strange(metaclass=Meta):
    """A class on which looking up a name its method uses raises (not AttributeError)."""

    value = 1

    def method(self) -> object:
        return self.instance_only  # type: ignore[attr-defined]


def test_names_cover_class_attributes_and_what_methods_use() -> None:
    """Class attributes along the MRO, and attribute names in methods (nested code too)."""
    names = typecache._names(Handler)
    assert {"greeting", "handle", "setup", "finish", "__init__"} <= names  # own and inherited
    assert {"request", "sendall", "suffix", "nested_name", "upper"} <= names  # used by methods


def test_warming_leaves_the_classes_as_they_were() -> None:
    """No lookup changes a class (getattr of __annotations__ stores one): its version stays."""

    class Plain(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(type(self).__annotations__)  # uses the name, too

    before = {klass: dict(vars(klass)) for klass in Plain.__mro__}
    assert typecache.warm([Plain]) > 0
    assert {klass: dict(vars(klass)) for klass in Plain.__mro__} == before


def test_a_lookup_that_fails_is_skipped() -> None:
    """A lookup that raises is skipped and not counted; the class's other names are warmed."""
    names = typecache._names(Strange)
    assert {"instance_only", "method", "value"} <= names
    with pytest.raises(RuntimeError, match="instance_only"):
        getattr(Strange, "instance_only", None)  # what warm() meets
    assert typecache.warm([Strange]) == len(names) - 1
    assert typecache.warm([Strange, Handler]) == len(names) - 1 + len(typecache._names(Handler))


@pytest.mark.skipif(
    sys.version_info >= (3, 12),
    reason="since 3.12 the names a cold lookup pushes out of the cache are immortal (PEP 683):"
    " it writes little besides the cache's entry, and these 300 lookups copy 192-207 pages"
    " cold against 188-194 warmed (3.13.0), too close to tell; bench/faults.py measures the"
    " forker's children (3.13.0: 11 faults fewer warmed)",
)
def test_a_warmed_child_copies_fewer_pages() -> None:
    """Lookups a child makes after `warm` copy fewer pages than the same lookups cold (3.11).

    Three hundred classes with an attribute each: cold, the child's lookups
    write entries all over the cache, and the reference counts of the names
    they put in and of those they push out (strings all over the heap);
    warmed, they only read it (3.11.7: 253-279 pages cold, 195-208 warmed).
    """
    script = textwrap.dedent(
        """
        import os, resource, sys
        from sockd.forker import typecache
        # The cache knows a name by its object, as code uses it: interned.
        names = [sys.intern(f"attribute{index}") for index in range(300)]
        classes = [type(f"C{index}", (), {name: index}) for index, name in enumerate(names)]

        def child_faults():
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                for cls, name in zip(classes, names):
                    getattr(cls, name)
                after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                os.write(write_end, str(after - before).encode())
                os._exit(0)
            os.close(write_end)
            faults = int(os.read(read_end, 100))
            os.waitpid(pid, 0)
            return faults

        cold = child_faults()
        typecache.warm(classes)
        print(cold, child_faults())
        """
    )
    source_root = os.path.dirname(os.path.dirname(os.path.dirname(typecache.__file__)))
    result = subprocess.run(
        [sys.executable, "-S", "-c", script],
        env={**os.environ, "PYTHONPATH": source_root},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    cold, warm = map(int, result.stdout.split())
    assert warm + 8 <= cold, (cold, warm)
