"""Messages to an engine, written by the API process's event loop itself and never blocking it. They are
framed as `multiprocessing.connection.Connection.send` frames them (a 4-byte big-endian length, or -1 and
an 8-byte one, then the pickle), so the engine's end of the pipe reads them with `Connection.recv`. What
the socket cannot take at once (an engine busy in a long step reads only between steps) waits here, in
order, and goes when the socket can take it.
"""
import os
import socket
import struct
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler

LONG_FRAME = 0x7FFFFFFF


class PipeWriter:
    def __init__(self, loop, conn: Connection):
        """Raises OSError where `conn` is not a socket (a Windows pipe): there, write on a thread."""
        self._loop = loop
        self._fd = conn.fileno()
        fd = os.dup(self._fd)
        try:
            self._sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            raise
        self._pending = bytearray()
        self.broken = False  # the engine's end is gone: what is sent from now on is dropped

    def send(self, message):
        """On the loop."""
        if self.broken:
            return
        payload = ForkingPickler.dumps(message)
        if len(payload) > LONG_FRAME:
            header = struct.pack("!i", -1) + struct.pack("!Q", len(payload))
        else:
            header = struct.pack("!i", len(payload))
        waiting = bool(self._pending)
        self._pending += header
        self._pending += payload
        if not waiting:
            self._flush()

    def _flush(self):
        try:
            while self._pending:
                del self._pending[:self._sock.send(self._pending, socket.MSG_DONTWAIT)]
        except BlockingIOError:
            self._loop.add_writer(self._fd, self._flush)
            return
        except OSError:
            self.broken = True
            self._pending.clear()
        self._loop.remove_writer(self._fd)

    def close(self):
        """On the loop: drop what is unsent."""
        self.broken = True
        self._pending.clear()
        self._loop.remove_writer(self._fd)
        self._sock.close()
