"""A trace collector for tests: OTLP/HTTP on 127.0.0.1, the protobuf decoded into spans.

What an OpenTelemetry Collector would receive from the orchestrator, without one: `POST
/v1/traces` with an ExportTraceServiceRequest (gzip or not), answered as the protocol says.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    service: str


class Collector:
    """An OTLP/HTTP trace receiver on 127.0.0.1: POST /v1/traces, protobuf in."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.changed = threading.Condition()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces" and self.headers["Content-Type"] == (
                    "application/x-protobuf"
                )
                if ok:
                    collector.receive(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def receive(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource in request.resource_spans:
            attrs = {a.key: a.value for a in resource.resource.attributes}
            service = attrs["service.name"].string_value if "service.name" in attrs else ""
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans.append(
                        Span(
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.name,
                            span.start_time_unix_nano,
                            span.end_time_unix_nano,
                            {a.key: _value(a.value) for a in span.attributes},
                            service,
                        )
                    )
        with self.changed:
            self.spans += spans
            self.changed.notify_all()

    def trace(self, trace_id: str, names: set[str], timeout: float) -> list[Span]:
        """The spans of one trace, once every name in `names` has arrived."""

        def complete() -> bool:
            return names <= {s.name for s in self.spans if s.trace_id == trace_id}

        with self.changed:
            self.changed.wait_for(complete, timeout)
            return [s for s in self.spans if s.trace_id == trace_id]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
