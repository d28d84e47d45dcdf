"""An example Python handler: answers each line in upper case, until the client closes.

Any `socketserver.BaseRequestHandler` subclass works unchanged in sockd; this
one is a `StreamRequestHandler`, so it reads and writes through files.
"""

import socketserver


class Upper(socketserver.StreamRequestHandler):
    """Upper-case each line received."""

    def handle(self) -> None:
        """Read lines until end of file, writing each back in upper case."""
        for line in self.rfile:
            self.wfile.write(line.upper())
