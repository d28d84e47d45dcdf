"""What bench/run.py reports: the combined table, the goals, the chart and docs/performance.md."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    LEGEND,
    TABLE_HEAD,
    Cell,
    Summary,
    cpu_text,
    errors_text,
    ratio_text,
    render,
    row_texts,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes

ROOT = Path(__file__).resolve().parents[1]
SATURATED = 0.9  # server busy at or above this: the server, not the client, was the limit
CLIENT_BOUND = 0.9  # generator busy at or above this: the client was the limit


@dataclass
class ModeResult:
    """One mode of the run: sockd against its reference, or why it did not run."""

    mode: str  # echo, exec, pool, proxy, udp
    title: str  # what is compared, in words
    reference: str  # the reference server's name
    header: tuple[str, ...] = ()  # what exactly ran (the mode's Bench header)
    meta: dict[str, Any] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)  # a server left out, and why
    failure: str | None = None  # why the whole mode failed
    cells: list[Cell] = field(default_factory=list)
    rows: list[Summary] = field(default_factory=list)
    log_line: str = ""
    executables: dict[str, list[str]] = field(default_factory=dict)  # per server (Server's)
    seconds: float = 0.0

    @property
    def subject(self) -> str:
        """Return the server measured against the reference: sockd, or the mode's name for it."""
        names = [row.server for row in self.rows] + list(self.not_run)
        return next((name for name in names if name != self.reference), "sockd")

    def row(self, server: str, clients: int) -> Summary | None:
        """Return the summary row of `server` at `clients`, if measured."""
        for row in self.rows:
            if row.server == server and row.clients == clients:
                return row
        return None


@dataclass
class ClientCheck:
    """The pool mode's reference measured with the Python generator, beside the C client."""

    reference: str
    c_rows: list[Summary]  # the reference with the C client (from the pool mode)
    python_rows: list[Summary]  # the reference with the Python generator
    failure: str | None = None


def plural(count: int, word: str) -> str:
    """Return `count word`, with an s unless there is one."""
    return f"{count} {word}{'' if count == 1 else 's'}"


# --- the text table ------------------------------------------------------------------------


def combined_table(results: Sequence[ModeResult]) -> str:
    """Render every mode's rows in one plain-text table, with what did not run and why."""
    head = ("mode", *TABLE_HEAD)
    body: list[tuple[str, ...]] = []
    for result in results:
        if result.failure is not None:
            body.append((result.mode, "-", f"not run: {result.failure}"))
            continue
        body += [(result.mode, *row_texts(row, result.reference)) for row in result.rows]
        body += [(result.mode, name, f"not run: {why}") for name, why in result.not_run.items()]
    return "\n".join([LEGEND, "", *render(head, body, left=2)])


# --- the load generator check --------------------------------------------------------------

CHECK_HEAD = (
    "clients", "C conn/s", "gen busy", "srv busy", "Python conn/s", "gen busy", "srv busy",
    "C/Python",
)  # fmt: skip


def check_rows(check: ClientCheck) -> list[tuple[str, ...]]:
    """Return one row per concurrency: each generator's conn/s and both sides' busy."""
    c_rows = {row.clients: row for row in check.c_rows}
    rows: list[tuple[str, ...]] = []
    for python in check.python_rows:
        c = c_rows.get(python.clients)
        if c is None:
            c_texts = ("-", "-", "-")
            gain = "-"
        else:
            c_texts = (f"{c.conn_per_s:.0f}", f"{c.generator_busy:.0%}", f"{c.server_busy:.0%}")
            gain = f"{c.conn_per_s / python.conn_per_s:.2f}" if python.conn_per_s else "-"
        python_texts = (
            f"{python.conn_per_s:.0f}",
            f"{python.generator_busy:.0%}",
            f"{python.server_busy:.0%}",
        )
        rows.append((str(python.clients), *c_texts, *python_texts, gain))
    return rows


def check_lines(check: ClientCheck | None) -> list[str]:
    """Say how far each load generator drove the same reference, and what limited it."""
    if check is None:
        return ["load generator check: not run (no C client in this run)"]
    if check.failure is not None:
        return [f"load generator check: not run: {check.failure}"]
    title = f"load generator check: the {check.reference} reference driven by each generator"
    return [title, *render(CHECK_HEAD, check_rows(check)), verdict(check)]


def verdict(check: ClientCheck) -> str:
    """Say whether the C client saturated the reference, with the figures."""
    rows = [row for row in check.c_rows if row.conn_per_s > 0]
    if not rows:
        return "no result of the C client to judge"
    best = max(rows, key=lambda row: row.conn_per_s)
    python_best = max((row.conn_per_s for row in check.python_rows), default=0.0)
    gain = f" ({best.conn_per_s / python_best:.2f}x the Python generator's best)"
    at = plural(best.clients, "client") + (gain if python_best else "")
    figures = (
        f"{best.conn_per_s:.0f} conn/s at {at}, the reference's CPU {best.server_busy:.0%}"
        f" busy, the generator's {best.generator_busy:.0%}"
    )
    if best.server_busy >= SATURATED:
        return f"The C client saturated the reference: {figures}."
    capacity = best.conn_per_s / best.server_busy if best.server_busy else 0.0
    return (
        f"The C client did not saturate the reference: {figures}. At full CPU the reference"
        f" would serve about {capacity:.0f} conn/s. On loopback the kernel does the TCP work"
        " of a packet on the CPU that sends it: the client's CPU carries the handshake (the"
        " server side's new socket included) and the close, and runs out first."
    )


# --- the goals of issues 5 and 14 ---------------------------------------------------------


def goal_lines(results: Sequence[ModeResult]) -> list[tuple[str, str, str]]:
    """Return (goal, measured, verdict) for each goal of issues 5 and 14 this run measures."""
    by_mode = {result.mode: result for result in results}
    goals: list[tuple[str, str, str]] = []
    echo, pool = by_mode.get("echo"), by_mode.get("pool")
    goals += [_ratio_goal(echo, "echo", clients, 1.5, 1.8) for clients in (8, 64)]
    row = echo.row("sockd", 64) if echo else None
    what = "echo: sockd's p99 < 3x its p50 at 64 clients"
    if row is None or not row.p50_ms:
        goals.append((what, "not measured", "n/a"))
    else:
        spread = row.p99_ms / row.p50_ms
        goals.append((what, f"{spread:.1f}x", "met" if spread < 3 else "NOT met"))
    for mode, minimum in (("exec", 1.2), ("pool", 0.8)):
        result = by_mode.get(mode)
        counts = sorted({row.clients for row in result.rows}) if result and result.rows else []
        goals += [_ratio_goal(result, mode, count, minimum) for count in counts or [64]]
    if pool is not None and pool.rows:
        count = max(row.clients for row in pool.rows)
        goals.append(_cpu_proxy(pool, count, 0.8))
    proxy = by_mode.get("proxy")
    if proxy is not None:
        counts = sorted({row.clients for row in proxy.rows}) or [64]
        goals += [_ratio_goal(proxy, "proxy", count, 0.95) for count in counts]
    return goals


def _ratio_goal(
    result: ModeResult | None, mode: str, clients: int, minimum: float, aim: float | None = None
) -> tuple[str, str, str]:
    reference = result.reference if result else "its reference"
    subject = result.subject if result else "sockd"
    what = f"{mode}: {subject} >= {minimum:g}x {reference}'s conn/s at {plural(clients, 'client')}"
    if aim:
        what += f" (aim {aim:g}x)"
    row = result.row(subject, clients) if result else None
    if row is None or row.ratio is None:
        return what, "not measured", "n/a"
    ok = "met" if row.ratio >= minimum else "NOT met"
    if aim and row.ratio >= aim:
        ok = "met, aim reached"
    measured = f"{row.ratio:.2f}x"
    ref = result.row(reference, clients) if result else None
    if ref is not None and ref.generator_busy >= CLIENT_BOUND and ref.server_busy < SATURATED:
        measured += f" ({reference} client-bound: its CPU {ref.server_busy:.0%} busy)"
    return what, measured, ok


def _cpu_proxy(pool: ModeResult, clients: int, minimum: float) -> tuple[str, str, str]:
    """Judge the pool goal by CPU per connection, which does not depend on the client."""
    what = (
        f"pool, by CPU: {pool.reference}'s CPU per connection / sockd's >= {minimum:g}"
        f" at {plural(clients, 'client')} (not a goal: a proxy independent of the client)"
    )
    sockd, reference = pool.row("sockd", clients), pool.row(pool.reference, clients)
    if sockd is None or reference is None or not sockd.cpu_us_per_conn:
        return what, "not measured", "n/a"
    ratio = reference.cpu_us_per_conn / sockd.cpu_us_per_conn
    measured = f"{ratio:.2f} ({reference.cpu_us_per_conn:.0f} / {sockd.cpu_us_per_conn:.0f} µs)"
    return what, measured, "met" if ratio >= minimum else "NOT met"


# --- the chart -----------------------------------------------------------------------------

SOCKD_COLOUR = "#1f6fb4"
REFERENCE_COLOUR = "#f28e2b"
BAR_WIDTH = 0.38


def draw_chart(
    results: Sequence[ModeResult], clients: Sequence[int], path: Path, title: str
) -> None:
    """Draw conn/s (top) and p99 latency (bottom) per mode, sockd beside its reference."""
    from matplotlib.figure import Figure  # noqa: PLC0415 (optional: needed here only)

    figure = Figure(figsize=(12, 9), dpi=110, layout="constrained")
    rate_axes, latency_axes = figure.subplots(2, 1)
    figure.suptitle(title, fontsize=11)
    _panel(rate_axes, results, clients, latency=False)
    _panel(latency_axes, results, clients, latency=True)
    rate_axes.set_title(
        "Connections per second (higher is better): median over repetitions, whiskers min-max"
    )
    latency_axes.set_title("p99 latency in ms (lower is better): median over repetitions")
    from matplotlib.patches import Patch  # noqa: PLC0415 (optional: needed here only)

    legend = [
        Patch(color=SOCKD_COLOUR, label="sockd (proxy: with the PROXY header)"),
        Patch(color=REFERENCE_COLOUR, label="its reference, named under each mode"),
    ]
    rate_axes.legend(handles=legend, loc="upper left", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def _panel(
    axes: Axes, results: Sequence[ModeResult], clients: Sequence[int], *, latency: bool
) -> None:
    from matplotlib.ticker import (  # noqa: PLC0415 (optional: needed here only)
        FuncFormatter,
        LogLocator,
        NullFormatter,
    )

    ticks: list[float] = []
    labels: list[str] = []
    below = axes.get_xaxis_transform()  # x in data, y in axes coordinates
    for index, result in enumerate(results):
        base = index * (len(clients) + 1)  # a gap between modes
        for offset, count in enumerate(clients):
            ticks.append(base + offset)
            labels.append(plural(count, "client"))
            for side, server in ((-1, result.subject), (1, result.reference)):
                position = base + offset + side * BAR_WIDTH / 2
                row = result.row(server, count)
                if row is None:
                    axes.text(position, 0.03, "not run", rotation=90, fontsize=8, color="grey",
                              ha="center", va="bottom", transform=below)  # fmt: skip
                    continue
                colour = SOCKD_COLOUR if side < 0 else REFERENCE_COLOUR
                _bar(axes, position, row, colour, latency=latency)
        name = f"{result.mode}: {result.subject} vs {result.reference}"
        axes.text(base + (len(clients) - 1) / 2, -0.1, name, ha="center", va="top",
                  fontsize=10, fontweight="bold", transform=below)  # fmt: skip
    axes.set_yscale("log")
    axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: _short(value, latency=latency)))
    axes.yaxis.set_minor_formatter(NullFormatter())
    axes.set_xlim(-0.7, len(results) * (len(clients) + 1) - 1.3)
    axes.set_xticks(ticks, labels, fontsize=8)
    axes.set_ylabel("p99 latency, ms" if latency else "connections/s")
    axes.grid(axis="y", which="major", alpha=0.4)
    axes.set_axisbelow(True)
    axes.margins(y=0.15)


def _bar(axes: Axes, position: float, row: Summary, colour: str, *, latency: bool) -> None:
    value = row.p99_ms if latency else row.conn_per_s
    error = None if latency else [[value - row.conn_per_s_min], [row.conn_per_s_max - value]]
    axes.bar(
        position,
        value,
        BAR_WIDTH,
        color=colour,
        yerr=error,
        capsize=2,
    )
    axes.annotate(_short(value, latency=latency), (position, value), xytext=(0, 2),
                  textcoords="offset points", ha="center", va="bottom", fontsize=7)  # fmt: skip


def _short(value: float, *, latency: bool) -> str:
    if latency:
        return f"{value:.2f}" if value < 1 else f"{value:.1f}" if value < 10 else f"{value:.0f}"
    return f"{value / 1000:.3g}k" if value >= 1000 else f"{value:.0f}"


# --- docs/performance.md -------------------------------------------------------------------


def machine() -> dict[str, str]:
    """Describe the machine: CPU model and count, memory, kernel, OS."""
    facts = {"cpu": "unknown", "memory": "unknown", "os": "unknown"}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            facts["cpu"] = line.partition(":")[2].strip()
            break
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            facts["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    os_release = Path("/etc/os-release")
    for line in os_release.read_text().splitlines() if os_release.exists() else []:
        if line.startswith("PRETTY_NAME="):
            facts["os"] = line.partition("=")[2].strip('"')
    return facts | {
        "cpus": f"{os.cpu_count()} logical CPUs",
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
    }


def git_revision() -> str:
    """Return the commit the working tree is at, and whether it has local changes."""
    try:
        commit, dirty = (
            subprocess.run(
                ["git", "-C", str(ROOT), *command],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            for command in (
                ["rev-parse", "--short", "HEAD"],
                ["status", "--porcelain", "--untracked-files=no"],
            )
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if dirty else "")


def markdown_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """Render a Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    return "\n".join(lines)


RESULTS_HEAD = (
    "mode", "server", "clients", "conn/s", "spread", "p50 ms", "p99 ms", "max ms",
    "errors r/r/t", "cpu µs/conn (own+rest)", "server busy", "gen. busy", "ratio",
)  # fmt: skip


def results_rows(results: Sequence[ModeResult]) -> list[list[str]]:
    """Return the rows of the results table in Markdown: every cell, and what did not run."""
    rows: list[list[str]] = []
    blank = [""] * (len(RESULTS_HEAD) - 3)
    for result in results:
        if result.failure is not None:
            rows.append([result.mode, "-", f"not run: {result.failure}", *blank])
            continue
        rows += [_result_row(result, row) for row in result.rows]
        not_run = result.not_run.items()
        rows += [[result.mode, name, f"not run: {why}", *blank] for name, why in not_run]
    return rows


def _result_row(result: ModeResult, row: Summary) -> list[str]:
    return [
        result.mode, row.server, str(row.clients), f"{row.conn_per_s:.0f}",
        f"{row.conn_per_s_min:.0f}-{row.conn_per_s_max:.0f}", f"{row.p50_ms:.2f}",
        f"{row.p99_ms:.2f}", f"{row.max_ms:.2f}", errors_text(row.errors), cpu_text(row),
        f"{row.server_busy:.0%}", f"{row.generator_busy:.0%}",
        "ref" if row.server == result.reference else ratio_text(row.ratio),
    ]  # fmt: skip


@dataclass(frozen=True)
class Document:
    """What docs/performance.md says besides the results."""

    meta: dict[str, Any]  # the run's: date, interpreter, settings, client, pinning, command
    machine: dict[str, str]
    revision: str
    chart: str  # the chart's path, relative to the document


PAGE = """\
# Performance

<!-- Written by bench/run.py: run it again rather than edit this file. -->

sockd against a reference for each way it serves a connection, measured side by side in one
run of `bench/run.py` on loopback, each connection one short line echoed: connections per
second, latency, errors, and the server's CPU per connection. Issues 5 and 14 set the goals.

- **Date:** {date} (the run took {minutes:.1f} minutes)
- **Machine:** {cpu}, {cpus}, {memory}; {kernel}; {os}
- **Interpreter**, for sockd and every Python reference: `{interpreter}` ({python})
- **sockd:** {sockd}, commit {revision}
- **Pinning:** {pinning}
- **Load generator:** {client}
- **Cells:** {cells}

## Results

{results}

Medians over the repetitions. *spread*: min-max of conn/s. *errors*: refused/reset/timeout,
totals. *cpu*: the server's CPU time per completed connection, its own processes (the
daemon and its forker; the reference's parent) + the rest of its tree (the children forked
per connection, or the pooled workers). *busy*: CPU time over the cell, where 100% is all
of the one CPU each side is pinned to: a server near 100% was the limit; a load generator
near 100% was, and then the server had more to give. *ratio*: sockd's conn/s over the
reference's.

![{alt}]({chart})

## Goals of issues 5 and 14 measured here

{goals}

## The load generator

{check}

## What ran

{what_ran}

## How to reproduce

From the repository root, on an otherwise idle machine with two CPUs or more:

```sh
./scripts/setup --tests   # .venv with matplotlib (the bench extra), tcpserver, haproxy
{command}
```

It builds the C client, `bench/loadgen.c`, with gcc into `bench/build/`; runs every mode;
prints the table; and writes `bench/results/latest.json` (every cell of every repetition),
`docs/performance.png` and this page. `--quick` makes a smoke run (1 repetition of 0.5 s at
1 and 8 clients); `--python PATH` runs sockd and every Python reference under another
interpreter (a virtualenv made once in `bench/build/`); `--help` lists the options. One
mode alone: `bench/echo.py`, `bench/exec.py`, `bench/pool.py`, `bench/proxy.py`,
`bench/udp.py`, with the same options (`--modes udp` adds the udp mode to a run).

## Notes

- A cell keeps N connections in flight for the window: each connects, sends
  `hello sockd\\n`, reads it back and closes (exec mode: half-closes after sending, and reads
  until the program exits). Connections still in flight when the window ends may finish or
  time out: they count for latency and errors, not for conn/s.
- The servers run pinned to one CPU and the load generator to another, so that neither
  takes the other's CPU; the order of the servers alternates from cell to cell.
- On loopback the kernel does the TCP work of a packet on the CPU that sends it, so the
  client's CPU also carries the server side's handshake and new socket, and the close.
  A fast server then makes even a C client the limit on two CPUs. So while the pool mode
  runs, loopback's receiving side is steered to the servers' CPU (RPS, with root; the
  setting is put back after): the servers' CPU carries that work, as a real server's
  does, and the client can drive them to their full CPU (see *The load generator*).
- The figures depend on the interpreter: forking costs more from a bigger process, and
  CPython built without PGO/LTO is slower (for fork per connection, Debian's
  `/usr/bin/python3` is about 35% faster than a plain source build). Compare runs made
  with the same interpreter only.
- On a shared or virtual machine figures move by 10-20% from run to run; the spread
  column shows how much they moved within this one.
- The udp mode (`--modes udp`, bench/udp.py) sends datagrams, not connections: each
  client is a UDP socket of its own, with one datagram in flight (a sequence number and
  the line), the next sent when the answer is back; an answer not back within the
  timeout is a loss (a timeout error). Its conn/s are answers per second. Every server
  answers in the process that reads the datagram, on `::1` (openbsd-inetd drops
  datagrams from 127.0.0.0/8).
"""


def what_ran(results: Sequence[ModeResult]) -> str:
    """List each mode: what it compares, the exact servers, sockd's log summary."""
    lines = []
    for result in results:
        lines.append(f"- **{result.mode}**: {result.title}")
        lines += [f"  - {line}" for line in result.header]
        if result.log_line:
            lines.append(f"  - {result.log_line}")
        if result.failure:
            lines.append(f"  - not run: {result.failure}")
    return "\n".join(lines)


def check_markdown(check: ClientCheck | None) -> str:
    """Render the load generator check as a Markdown table and a verdict."""
    if check is None or check.failure is not None:
        return check_lines(check)[0]
    head = tuple(f"{name} (C)" if 1 <= i <= 3 else name for i, name in enumerate(CHECK_HEAD))
    intro = (
        f"The {check.reference} reference of the pool mode, driven by the C client and, once"
        " more in the same run, by the Python generator:"
    )
    return "\n\n".join([intro, markdown_table(head, check_rows(check)), verdict(check)])


def markdown(results: Sequence[ModeResult], check: ClientCheck | None, doc: Document) -> str:
    """Return docs/performance.md: date, machine, how to reproduce, results, chart, notes."""
    meta, settings = doc.meta, doc.meta["settings"]
    clients = ", ".join(map(str, settings["clients"]))
    interpreter = f"{meta['interpreter']}` → `{meta['interpreter_realpath']}"
    return PAGE.format(
        date=meta["date"],
        minutes=meta["seconds"] / 60,
        interpreter=interpreter,
        python=meta["python"],
        sockd=meta["sockd"],
        revision=doc.revision,
        pinning=meta["pinning_text"],
        client=meta["client"],
        cells=f"{plural(settings['repeat'], 'repetition')} of {settings['duration']:g} s at"
        f" {clients} concurrent clients; per-connection timeout {settings['timeout']:g} s",
        results=markdown_table(RESULTS_HEAD, results_rows(results)),
        alt=f"Connections per second and p99 latency of sockd and its reference per mode,"
        f" at {clients} clients",
        chart=doc.chart,
        goals=markdown_table(("goal", "measured", "verdict"), goal_lines(results)),
        check=check_markdown(check),
        what_ran=what_ran(results),
        command=meta["command"],
        **doc.machine,
    )
