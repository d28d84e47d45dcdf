"""Run every benchmark in one go: each way sockd serves a connection, against its reference.

Modes: echo (sockd's echo built-in, fork per connection, against the stock
socketserver.ForkingTCPServer), exec (`head -n1` run per connection, against tcpserver),
pool (the echo built-in in a `workers = 4` service, against 4 pre-forked processes,
bench/prefork_ref.py), proxy (the echo built-in behind HAProxy with `proxy_protocol =
true` and `send-proxy-v2`, against the same without both, bench/proxy.py) and udp (the
echo built-in over UDP, answered in the forker, against socketserver.UDPServer and
openbsd-inetd's internal echo, bench/udp.py). Then the pool
mode's reference once more with the Python load generator, to show how far the C client
drives it. Prints one table, and writes the results as JSON, a chart (PNG) and
docs/performance.md. A mode that cannot run (say, tcpserver or haproxy missing) is
reported as not run, with the reason; the others go on.
"""

# How a cell is measured is described in bench/common.py; each mode's own script says
# what it compares. Every Python server runs under one interpreter (this one, or --python's:
# see common.use_python) and on loopback only; every cell is bounded by duration + timeout.

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Run as a script, Python puts bench/ on sys.path, not the repository root: the shared
# code is the module bench.common, the name mypy knows it by.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench import echo, footprint, pool, proxy, scale, udp
from bench import exec as exec_mode
from bench.common import (
    Bench,
    BenchError,
    build_parser,
    header_lines,
    measure,
    notes,
    prepare,
    run_meta,
    settings_from,
)
from bench.report import (
    ROOT,
    ClientCheck,
    Document,
    ModeResult,
    check_lines,
    combined_table,
    draw_chart,
    git_revision,
    goal_lines,
    machine,
    markdown,
)

if TYPE_CHECKING:
    import argparse

    from bench.common import Pinning, Settings

# Each mode: what it compares, and its reference's name.
MODES = {
    "echo": ("sockd's echo, fork per connection, vs socketserver.ForkingTCPServer", "stdlib"),
    "exec": ("`head -n1` exec'd per connection, vs tcpserver", "tcpserver"),
    "pool": ("sockd's echo, `workers = 4`, vs 4 pre-forked processes", "prefork"),
    "proxy": (
        "sockd's echo behind HAProxy, `proxy_protocol = true` and send-proxy-v2, vs without",
        proxy.REFERENCE,
    ),
    "udp": (
        "sockd's echo over UDP, answered in the forker, vs socketserver.UDPServer (and inetd's)",
        udp.REFERENCE,
    ),
}
# What runs without --modes: udp only when asked (`--modes udp`), until the daemon serves UDP.
DEFAULT_MODES = ("echo", "exec", "pool", "proxy", "udp")
DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"
DEFAULT_PNG = ROOT / "docs" / "performance.png"
DEFAULT_MARKDOWN = ROOT / "docs" / "performance.md"
MATPLOTLIB_HINT = "run scripts/setup, or: .venv/bin/pip install -e '.[bench]'"


def mode_bench(mode: str, args: argparse.Namespace) -> Bench:
    """Return the Bench of `mode`.

    Raises:
        BenchError: it cannot run here (tcpserver or haproxy missing).

    """
    if mode == "echo":
        return echo.make_bench()
    if mode == "exec":
        return exec_mode.make_bench(args.tcpserver)
    if mode == "proxy":
        return proxy.make_bench(args.haproxy)
    if mode == "udp":
        return udp.make_bench(args.inetd)
    return pool.make_bench("workers")


def run_mode(
    mode: str, args: argparse.Namespace, settings: Settings, pinning: Pinning
) -> ModeResult:
    """Measure one mode; a failure is recorded in the result, never raised."""
    title, reference = MODES[mode]
    started = time.monotonic()
    try:
        bench = mode_bench(mode, args)
    except BenchError as exc:
        print(f"\n{mode}: {title}: not run: {exc}", flush=True)
        return ModeResult(mode, title, reference, failure=str(exc))
    result = ModeResult(mode, title, bench.reference, bench.header, bench.meta, dict(bench.not_run))
    print(f"\n{mode}: {title}", flush=True)
    for line in bench.header:
        print(f"  {line}", flush=True)
    try:
        outcome = measure(bench, settings, pinning, label=mode)
    except BenchError as exc:
        print(f"{mode}: not run: {exc}", file=sys.stderr, flush=True)
        result.failure = str(exc)
    else:
        result.cells, result.rows, result.log_line = outcome.cells, outcome.rows, outcome.log_line
        result.executables = outcome.executables
    result.seconds = time.monotonic() - started
    return result


def client_check(pool_result: ModeResult, settings: Settings, pinning: Pinning) -> ClientCheck:
    """Measure the pool mode's reference with the Python generator, beside its C rows."""
    reference = pool_result.reference
    c_rows = [row for row in pool_result.rows if row.server == reference]
    python_settings = dataclasses.replace(settings, client="python", loadgen=None)
    bench = Bench("run.py", reference, partial(pool.running_servers, None))
    print(f"\ncheck: the {reference} reference with the Python load generator", flush=True)
    try:
        outcome = measure(bench, python_settings, pinning, label="check")
    except BenchError as exc:
        return ClientCheck(reference, c_rows, [], failure=str(exc))
    return ClientCheck(reference, c_rows, outcome.rows)


def build_run_parser() -> argparse.ArgumentParser:
    """Return run.py's parser: the common options, plus the outputs and the modes."""
    parser = build_parser(__doc__, "bench/run.py", sockd_log=False)
    parser.set_defaults(json=DEFAULT_JSON)
    parser.add_argument("--png", metavar="PATH", type=Path, default=DEFAULT_PNG, help="chart")
    parser.add_argument(
        "--markdown",
        metavar="PATH",
        type=Path,
        default=DEFAULT_MARKDOWN,
        help="the results page (it links the chart by a relative path)",
    )
    parser.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help=f"comma-separated modes to run, of {', '.join(MODES)}",
    )
    parser.add_argument(
        "--tcpserver", metavar="PATH", help="exec mode: the tcpserver (default: on PATH)"
    )
    parser.add_argument(
        "--haproxy", metavar="PATH", help="proxy mode: the haproxy (default: on PATH)"
    )
    parser.add_argument(
        "--inetd", metavar="PATH", help="udp mode: openbsd-inetd (default: /usr/sbin/inetd)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run every mode; print the table; write JSON, chart and page.

    Returns 0 when every server of every mode ran, 2 when some did not (the outputs say
    which and why), 1 when nothing could run.
    """
    parser = build_run_parser()
    args = parser.parse_args(argv)
    settings = settings_from(args, parser)
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not modes or any(mode not in MODES for mode in modes):
        parser.error(f"--modes: expected some of {', '.join(MODES)}, got {args.modes!r}")
    if importlib.util.find_spec("matplotlib") is None:
        print(f"run.py: matplotlib is missing, for the chart: {MATPLOTLIB_HINT}", file=sys.stderr)
        return 1
    started = time.monotonic()
    host = machine()  # before prepare() pins this process to one CPU
    try:
        settings, pinning, client = prepare(args, settings)
    except BenchError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 1
    meta = run_meta(settings, pinning, client)
    meta |= {"pinning_text": pinning.describe(), "machine": host}
    for line in header_lines(meta, pinning, settings):
        print(line, flush=True)

    results = [run_mode(mode, args, settings, pinning) for mode in modes]
    check = None
    pool_result = next((result for result in results if result.mode == "pool"), None)
    if settings.client == "c" and pool_result is not None and pool_result.failure is None:
        check = client_check(pool_result, settings, pinning)

    print_report(results, check)
    extras = measure_extras(quick=args.quick)
    for title, _, lines in extras:
        print(f"\n{title}:")
        print("\n".join(f"  {line}" for line in lines))
    seconds = time.monotonic() - started

    command = shlex.join(
        [".venv/bin/python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]
    )
    write_outputs(args, results, check, meta | {"seconds": seconds, "command": command}, extras)
    print(f"\nwrote {args.json}, {args.png}, {args.markdown} ({seconds / 60:.1f} minutes)")
    complete = all(result.failure is None and not result.not_run for result in results)
    return 0 if complete else 2


def print_report(results: list[ModeResult], check: ClientCheck | None) -> None:
    """Print the combined table, the notes, the load generator check and the goals."""
    print()
    print(combined_table(results))
    for result in results:
        for line in notes(result.rows):
            print(f"{result.mode}: {line}")
        if result.log_line:
            print(f"{result.mode}: {result.log_line}")
    print()
    for line in check_lines(check):
        print(line)
    print()
    print("goals of issues 5 and 14:")
    for goal, measured, verdict in goal_lines(results):
        print(f"  {goal}: {measured}, {verdict}")


def measure_extras(*, quick: bool) -> list[tuple[str, dict[str, Any], list[str]]]:
    """Run bench/scale.py's and bench/footprint.py's measures: (title, results, lines)."""
    flat, flat_lines = scale.measure(repeat=1 if quick else 3, duration=1.0 if quick else 3.0)
    memory, memory_lines = footprint.measure(repeat=2 if quick else 7)
    return [
        (
            "Flat cost with 1,000 idle connections, and a burst of 200 (bench/scale.py)",
            flat,
            flat_lines,
        ),
        ("Start-up and memory (bench/footprint.py)", memory, memory_lines),
    ]


def write_outputs(
    args: argparse.Namespace,
    results: list[ModeResult],
    check: ClientCheck | None,
    meta: dict[str, Any],
    extras: list[tuple[str, dict[str, Any], list[str]]],
) -> None:
    """Write the JSON report, the chart and the page, where the options say."""
    revision = git_revision()
    report = {
        "meta": meta | {"revision": revision},
        "modes": {result.mode: asdict(result) for result in results},
        "client_check": asdict(check) if check else None,
        "extras": {title: result for title, result, _ in extras},
        "goals": [
            {"goal": goal, "measured": measured, "verdict": verdict}
            for goal, measured, verdict in goal_lines(results)
        ],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    host = meta["machine"]
    title = (
        f"sockd {meta['sockd']} and its references, {meta['date'][:10]}: {host['cpu']},"
        f" {host['cpus']}, {meta['python']}; servers on one CPU, load generator on another"
    )
    draw_chart(results, meta["settings"]["clients"], args.png, title)
    chart = os.path.relpath(args.png.resolve(), args.markdown.resolve().parent)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    page = markdown(results, check, Document(meta, host, revision, chart))
    for title, _, lines in extras:
        page += f"\n## {title}\n\n```\n" + "\n".join(lines) + "\n```\n"
    args.markdown.write_text(page)


if __name__ == "__main__":
    sys.exit(main())
