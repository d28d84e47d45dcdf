"""Echo datagrams back, a child per datagram: stand-alone, or socket-activated by systemd."""

import socketserver
import sys

from sockd import ForkingUDPServer


class Echo(socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())  # sent back to the sender when handle() returns


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8007  # ignored when systemd passes a socket
with ForkingUDPServer(("127.0.0.1", port), Echo) as server:
    print("serving on", *server.server_address, flush=True)
    server.notify_ready()
    server.serve_forever()
