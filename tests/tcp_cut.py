"""A TCP relay for fault tests: forwards to a server, and can cut a transfer in the middle.

``CuttingRelay(port, cut_after=N)`` listens on 127.0.0.1 and relays every connection to the
server at ``port``. Once the server has sent ``N`` bytes back (over all connections), it cuts
that connection and stops listening, so the client sees its transfer end half-way and every
later attempt refused: a server that died in the middle of a response, at a byte count the
test chooses (no timing involved). ``cut_at=b"HTTP/1.1 200"`` cuts instead where the server
starts that answer (after it carried out the request; a ``100 Continue`` before it passes).
With ``keep_listening=True`` only that one connection is cut and everything after it passes
(a network blip). ``cut`` is set when the cut happened.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class CuttingRelay:
    """Relays 127.0.0.1:``self.port`` to 127.0.0.1:``upstream``; cuts after ``cut_after`` bytes."""

    def __init__(
        self,
        upstream: int,
        *,
        cut_after: int = 1 << 62,
        cut_at: bytes | None = None,
        keep_listening: bool = False,
    ) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.cut_at = cut_at
        self.keep_listening = keep_listening
        self.sent = 0
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._start(self._accept)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while self.keep_listening or not self.cut.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self._lock:
                self._sockets += [client, server]
            self._start(self._pump, client, server, False)
            self._start(self._pump, server, client, True)

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if counted:
                    with self._lock:
                        allowed = self.cut_after - self.sent
                        if self.cut_at is not None and self.cut_at in data:
                            allowed = min(allowed, data.index(self.cut_at))
                        self.sent += len(data)
                        cutting = allowed < len(data) and not self.cut.is_set()
                        if cutting:
                            self.cut.set()
                    if cutting:
                        if allowed > 0:
                            sink.sendall(data[:allowed])
                        if not self.keep_listening:
                            self.close()
                        for s in (source, sink):
                            with contextlib.suppress(OSError):
                                s.shutdown(socket.SHUT_RDWR)
                        return
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stops listening and cuts every open connection (idempotent)."""
        self.keep_listening = False
        self.cut.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def join(self) -> None:
        self.close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(30)
