"""A loopback port for a process this script is about to start (a registry, a server)."""
import random
import socket


def free_port():
    """A port free when checked, below the kernel's ephemeral range (32768 and up by
    default): a port from that range can go to any outgoing connection before the process
    it is meant for binds it."""
    while True:
        port = random.randint(20000, 31999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
