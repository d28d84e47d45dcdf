"""Echo lines back, a child per connection: stand-alone, or socket-activated by systemd."""

import socketserver
import sys

from sockd import ForkingTCPServer


class Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8007  # ignored when systemd passes a socket
with ForkingTCPServer(("127.0.0.1", port), Echo) as server:
    print("serving on", *server.server_address, flush=True)
    server.notify_ready()
    server.serve_forever()
