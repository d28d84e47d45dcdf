"""`python -m sockd`, `sockd`: the daemon's entry point; `run` blocks its signals before any import.

A SIGHUP or SIGTERM that comes while sockd starts (importing alone takes
about 100 ms) would otherwise kill it with nothing logged. Blocked, it waits:
the main loop unblocks the signals once its handlers are installed, then
acts on it (a stop, or a reload once ready). Nothing but the standard
library's `signal` and `sys` is imported first.
"""

import signal
import sys

# The signals sockd's main loop handles (sockd.supervisor.loop.DAEMON_SIGNALS; a test holds
# them equal).
EARLY_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def main() -> None:
    """Block the daemon's signals for `sockd run`, then run the command line."""
    # The command is the first argument (before it, only --help and --version
    # make sense); `check` and the rest keep the default actions.
    if sys.argv[1:2] == ["run"]:
        signal.pthread_sigmask(signal.SIG_BLOCK, EARLY_SIGNALS)
    from sockd.supervisor.cli import main as cli_main  # noqa: PLC0415 (only once the signals are blocked)

    cli_main()


if __name__ == "__main__":
    main()
