"""Free loopback ports for the tests' multi-process jobs."""

import socket


def free_ports(count):
    """`count` distinct ports that were free a moment ago (held open together, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
