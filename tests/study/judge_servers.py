"""Loopback HTTP servers that misbehave on cue, for the LLM judge's fault tests and
`bench/faults/probe.py`: `Silent` accepts connections and never answers (``drip=True``: sends one
byte of a header every 0.3 s), `Answers` answers every chat request with one content and status."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time


class Silent:
    """Accepts connections and never sends a byte (``drip``: sends one byte of a header every 0.3 s)."""

    def __init__(self, drip: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.drip = drip
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            if self.drip:
                threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        msg = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100000
        for i in range(len(msg)):
            if self.stop.is_set():
                return
            try:
                conn.sendall(msg[i:i + 1])
            except OSError:
                return
            time.sleep(0.3)

    def close(self) -> None:
        self.stop.set()
        for c in self.conns:
            c.close()
        self.sock.close()


class Answers(http.server.ThreadingHTTPServer):
    """A chat-completions endpoint answering every request with ``content`` (or ``status``)."""

    def __init__(self, content: str = "", status: int = 200) -> None:
        outer = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                outer.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def close(self) -> None:
        self.shutdown()
        self.server_close()




#: A judge answer that parses: all four behaviours.
GOOD = json.dumps({"verification": True, "backtracking": False, "subgoal_setting": True, "enumeration": False})
