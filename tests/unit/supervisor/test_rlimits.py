"""Tests of sockd.supervisor.rlimits: a program's resource limits as written, and checked."""

from __future__ import annotations

import re
import resource

import pytest

from sockd.supervisor import rlimits


class TestParse:
    @pytest.mark.parametrize(
        ("name", "value", "limit"),
        [
            ("files", 64, 64),
            ("files", "64", 64),
            ("core", 0, 0),
            ("fsize", "0", 0),
            ("files", 4, 4),
            ("as", "512M", 512 << 20),
            ("as", "512m", 512 << 20),
            ("stack", "8k", 8 << 10),
            ("data", "2G", 2 << 30),
            ("fsize", "unlimited", None),
            ("nproc", "INFINITY", None),
            ("core", rlimits.MAX_VALUE, rlimits.MAX_VALUE),
        ],
    )
    def test_forms(self, name: str, value: object, limit: int | None) -> None:
        """A number, a size with K, M or G (any case), or unlimited/infinity (None)."""
        assert rlimits.parse(name, value) == limit

    @pytest.mark.parametrize(
        ("name", "value", "problem"),
        [
            ("files", "1K", "'1K': files is a count, not bytes: no K, M or G"),
            ("cpu", "1m", "'1m': cpu is seconds, not bytes: no K, M or G"),
            ("as", "1.5M", "'1.5M' is neither a number, with K, M or G, nor \"unlimited\""),
            ("files", " 64", "' 64' is neither a number, nor \"unlimited\""),
            ("as", "٣", "'٣' is neither a number"),  # a digit, but not an ASCII one
            ("as", "9" * 40, "is neither a number"),
            ("as", "9" * 19 + "G", 'is more than 9223372036854775807 (write "unlimited")'),
            ("as", -1, 'must be at least 1 (or "unlimited"), got -1'),
            ("cpu", 0, 'must be at least 1 (or "unlimited"), got 0'),  # killed at its first tick
            ("nproc", "0", 'must be at least 1 (or "unlimited"), got 0'),
            ("files", 3, 'must be at least 4 (or "unlimited"), got 3'),  # no library loads
            ("core", -1, 'must be at least 0 (or "unlimited"), got -1'),
            ("as", 1 << 63, "must be at most 9223372036854775807"),
            ("as", None, "expected an integer or a string, got NoneType"),
            ("as", False, "expected an integer or a string, got bool"),
        ],
    )
    def test_refused(self, name: str, value: object, problem: str) -> None:
        """Anything else: a ValueError whose one line says why."""
        with pytest.raises(ValueError, match=re.escape(problem)) as raised:
            rlimits.parse(name, value)
        assert "\n" not in str(raised.value)


class TestHardLimit:
    def test_up_to_this_processs_hard_limit(self) -> None:
        """The hard limit itself may be set; one more, or unlimited under a finite one, not."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        assert rlimits.beyond_hard("files", hard) is None
        assert rlimits.beyond_hard("files", 0) is None
        problem = rlimits.beyond_hard("files", hard + 1)
        assert problem is not None
        assert problem.startswith(
            f"{hard + 1} is above sockd's hard limit of {hard} (RLIMIT_NOFILE)"
        )
        assert rlimits.beyond_hard("files", None) == problem.replace(str(hard + 1), "unlimited", 1)


class TestNames:
    def test_names_and_resources(self) -> None:
        """Each name is a resource of this system; the sizes are some of them."""
        assert set(rlimits.SIZES) < set(rlimits.RESOURCES)
        for constant in rlimits.RESOURCES.values():
            assert isinstance(getattr(resource, constant), int)
