"""A do-nothing OTLP/HTTP receiver, so ``--store sqlite+tracing`` measures the
worker with tracing on: spans are built, batched, serialised and sent over
HTTP as they would be to a collector, and this answers 200 to each export."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    exports = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        _Handler.exports += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


class OtlpSink:
    """``with OtlpSink() as endpoint:`` -> ``http://127.0.0.1:<port>``."""

    def __enter__(self) -> str:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.server.serve_forever, name="otlp-sink", daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def exports(self) -> int:
        return _Handler.exports
