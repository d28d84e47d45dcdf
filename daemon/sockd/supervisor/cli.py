"""The `sockd` command, in the daemon: arguments and exit codes; the only place that exits."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import NoReturn

import structlog

from sockd._version import __version__
from sockd.errors import (
    EX_CONFIG,
    EX_OK,
    EX_SOFTWARE,
    EX_USAGE,
    SockdError,
    UsageError,
    exception_fields,
)
from sockd.supervisor import config as sockd_config
from sockd.supervisor import daemonize
from sockd.supervisor import log as sockd_log
from sockd.supervisor.importer import EX_PARTIAL
from sockd.supervisor.tables import one_line

EXIT_CODES = f"""exit codes:
  {EX_OK}   stopped cleanly (or the config is valid, for check)
  1   import: converted, but parts were left as comments (see `sockd import --help`)
  {EX_USAGE}  usage error on the command line
  {EX_SOFTWARE}  internal error (logged as `crashed` or `forker_died`)
  71  the operating system refused (bind, fork, pid file)
  77  no permission (a privileged port, or dropping privileges)
  {EX_CONFIG}  configuration error (file, environment from systemd, handler)
"""


IMPORT_EXIT_CODES = f"""exit codes:
  {EX_OK}   converted: the output passes `sockd check`
  {EX_PARTIAL}   converted, but parts with no equivalent are comments (listed on stderr)
  {EX_USAGE}  usage error on the command line
  {EX_CONFIG}  the file cannot be read or parsed, or no service is left to serve
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser for `sockd`."""
    parser = _Parser(
        prog="sockd",
        description="A systemd-native forking socket server.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sockd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="serve until stopped", epilog=EXIT_CODES)
    run.add_argument("--config", metavar="FILE", help=f"default {sockd_config.DEFAULT_PATH}")
    run.add_argument("--handler", metavar="SPEC", help="one service: a built-in or module:Class")
    run.add_argument(
        "--listen", metavar="ADDR", action="append", default=[], help="with --handler; repeatable"
    )
    run.add_argument("--name", help="with --handler: the service name (FileDescriptorName=)")
    run.add_argument("--log-format", choices=["json", "console"], help="default: by stderr")
    run.add_argument("--daemon", action="store_true", help="detach (not under systemd)")
    run.add_argument("--pidfile", metavar="PATH", help="with --daemon")
    run.add_argument("--log-file", metavar="PATH", help="with --daemon: where logs go")
    check = commands.add_parser("check", help="validate and print the effective config")
    check.add_argument("--config", metavar="FILE", default=sockd_config.DEFAULT_PATH)
    check.add_argument("--quiet", "-q", action="store_true", help="print nothing when valid")
    convert = commands.add_parser(
        "import",
        help="print a sockd.toml converted from inetd.conf or xinetd.conf",
        epilog=IMPORT_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument("format", choices=["inetd", "xinetd"])
    convert.add_argument(
        "file", nargs="?", metavar="FILE", help="default /etc/inetd.conf, /etc/xinetd.conf"
    )
    return parser


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the `sockd` command line and exit with its status."""
    args = build_parser().parse_args(argv)
    if args.command == "check":
        sys.exit(_check(args.config, quiet=args.quiet))
    if args.command == "import":
        sys.exit(_import(args.format, args.file))
    sys.exit(_run(args))


def _check(path: str, *, quiet: bool) -> int:
    try:
        config = sockd_config.load(path)
    except SockdError as exc:
        # Under systemd (ExecStartPre=, ExecReload=) the journal files it as an error.
        priority = "<3>" if sockd_log.stderr_is_journal() else ""
        print(f"{priority}sockd: {exc}", file=sys.stderr)
        return exc.exit_code
    priority = "<4>" if sockd_log.stderr_is_journal() else ""
    for warning in config.warnings:  # inetd_conf's lines skipped: valid, and said
        print(f"{priority}sockd: {warning}", file=sys.stderr)
    if not quiet:
        print(sockd_config.to_toml(config), end="")
    return EX_OK


def _import(kind: str, path: str | None) -> int:
    from sockd.supervisor import importer, inetdconf, xinetdconf  # noqa: PLC0415 (import only)

    reader = inetdconf.read if kind == "inetd" else xinetdconf.read
    path = path or (inetdconf.DEFAULT_PATH if kind == "inetd" else xinetdconf.DEFAULT_PATH)
    try:
        result = importer.convert(reader(path), path)
    except SockdError as exc:
        print(f"sockd: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception:  # noqa: BLE001 (a bug: not exit 1, which says "converted in part")
        traceback.print_exc()
        return EX_SOFTWARE
    print(result.text, end="")
    for problem in result.problems:
        print(f"sockd: {problem}", file=sys.stderr)
    if not result.served:
        where = one_line(path, 4096)
        print(
            f"sockd: {where}: no service left to serve (sockd check refuses that)", file=sys.stderr
        )
        return EX_CONFIG
    return EX_PARTIAL if result.problems else EX_OK


def _run(args: argparse.Namespace) -> int:
    from sockd.supervisor import startup  # noqa: PLC0415 (check needs none of it)

    try:
        _check_run_options(args)
    except UsageError as exc:
        print(f"sockd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    sockd_log.configure(args.log_format)
    try:
        options = startup.RunOptions(
            config=_run_config(args),
            log_format=args.log_format,
            detach=args.daemon,
            pidfile=args.pidfile,
            log_file=args.log_file,
        )
        return startup.run(options)
    except SockdError as exc:
        structlog.get_logger().error("startup_failed", error=str(exc), exit_code=exc.exit_code)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 (a bug: one event with the traceback as data)
        structlog.get_logger().critical("crashed", exception=exception_fields(exc))
        return EX_SOFTWARE


def _check_run_options(args: argparse.Namespace) -> None:
    if args.daemon and not (args.pidfile and args.log_file):
        raise UsageError("--daemon needs --pidfile PATH and --log-file PATH")
    if not args.daemon and (args.pidfile or args.log_file):
        raise UsageError("--pidfile and --log-file only go with --daemon")
    if args.handler is None and (args.listen or args.name):
        raise UsageError("--listen and --name only go with --handler")
    if args.handler is not None and args.config:
        raise UsageError("give either --config or --handler, not both")
    if args.daemon:
        daemonize.refuse_under_systemd(os.environ)


def _run_config(args: argparse.Namespace) -> sockd_config.Config:
    if args.handler is None:
        # Absolute: --daemon changes to / and a reload must find the same file.
        return sockd_config.load(os.path.abspath(args.config or sockd_config.DEFAULT_PATH))
    name = args.name or args.handler.rpartition(":")[2]
    return sockd_config.one_service(args.handler, args.listen, name)
