"""Unit tests of sockd.errors: exceptions described as bounded data."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from sockd import ipc
from sockd.errors import exception_fields

# Run in a subprocess with a deadline: on a loop that never ends, the test
# fails instead of hanging (the child would spin at 100% CPU holding its slot).
_HUGE = textwrap.dedent(
    """
    import marshal, sys, types
    from sockd.errors import exception_fields

    def build(kind, message, filename, depth):
        code = compile("def f():\\n    raise kind(message)\\n", filename, "exec")
        space = {"kind": kind, "message": message}
        exec(code, space)
        try:
            space["f"]()
        except BaseException as exc:
            tb = exc.__traceback__
            chain = tb
            for _ in range(depth):  # one frame, linked `depth` times: a deep traceback
                chain = types.TracebackType(chain, tb.tb_frame, tb.tb_lasti, tb.tb_lineno)
            return exc.with_traceback(chain)

    case = sys.argv[1]
    if case == "type":
        exc = build(type("E" * 10_000, (Exception,), {}), "m", "f.py", 0)
    elif case == "file":
        exc = build(ValueError, "m" * 100_000, "/" + "f" * 100_000, 3)
    else:
        exc = build(ValueError, "m", "/" + "f" * 5_000, 100_000)
    fields = exception_fields(exc)
    print(len(marshal.dumps(fields)), len(fields["type"]), len(fields["frames"]))
    """
)


def describe_in_subprocess(case: str) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", _HUGE, case], capture_output=True, text=True, timeout=30, check=True
    )
    return [int(word) for word in done.stdout.split()]


class TestExceptionFields:
    def test_huge_type_name_is_cut(self) -> None:
        """A 10,000-character class name is cut, and the description fits its budget."""
        size, type_length, _ = describe_in_subprocess("type")
        assert size <= 3800
        assert type_length < 400

    def test_huge_file_names_are_cut(self) -> None:
        """Frames with 100,000-character file names and a huge message still fit the budget."""
        size, _, frames = describe_in_subprocess("file")
        assert size <= 3800
        assert frames >= 1

    def test_deep_frame_list_of_long_names(self) -> None:
        """100,000 frames whose names alone exceed the budget: it returns, within the budget."""
        size, _, _ = describe_in_subprocess("deep")
        assert size <= 3800

    def test_a_cut_description_stays_one_small_record(self) -> None:
        """The record of a cut description stays under 4 KiB: one bounded log line."""
        kind = type("K" * 5000, (Exception,), {})
        fields = exception_fields(kind("x" * 50_000))
        record = ipc.encode(("log", "error", "handler_error", {"exception": fields}))
        assert len(record) <= 4096
        assert fields["type"].startswith("KKK")
        assert fields["message"].startswith("xxx")
