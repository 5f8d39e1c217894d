"""A do-nothing OTLP/HTTP receiver, so ``--store sqlite+tracing`` measures the
worker with tracing on: spans are built, batched, serialised and sent over
HTTP as they would be to a collector, and this answers 200 to each export."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    exports = 0  # this sink's own count (a class-wide one added up every worker's of the run)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # Keep-alive, as a collector answers: the exporter's session reuses its connection.
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        self.server.exports += 1  # the exporter posts one batch at a time
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


class OtlpSink:
    """``with OtlpSink() as endpoint:`` -> ``http://127.0.0.1:<port>``."""

    def __enter__(self) -> str:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.server.serve_forever, name="otlp-sink", daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def exports(self) -> int:
        return self.server.exports
