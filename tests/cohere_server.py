"""A local stand-in for Cohere's v2 rerank endpoint, for tests that drive the real `cohere` SDK.

    with CohereServer() as server:            # 127.0.0.1, a free port
        os.environ["CO_API_URL"] = server.url
        server.script(("error", 500), ("slow", 5.0))   # then normal replies
        ...
        server.requests                        # what the SDK sent: path, headers, body

Relevance is word overlap between query and document, so the expected order is easy to
recompute. Error bodies echo the Authorization header on purpose: a client that copies
response bodies into its messages must redact the key.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_WORD = re.compile(r"[a-z0-9]+")


def overlap_score(query: str, document: str) -> float:
    """Share of the query's distinct words found in the document, in [0, 1]."""
    q = set(_WORD.findall(query.lower()))
    d = set(_WORD.findall(document.lower()))
    return len(q & d) / len(q) if q else 0.0


def rank_documents(query: str, documents: list[str], top_n: int | None = None) -> list[dict[str, Any]]:
    """The results list the server returns: best first, ties by position."""
    scored = sorted(((overlap_score(query, doc), i) for i, doc in enumerate(documents)), key=lambda t: (-t[0], t[1]))
    return [{"index": i, "relevance_score": round(s, 6)} for s, i in scored[: top_n or len(documents)]]


class CohereServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._script: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, *steps: tuple[str, Any]) -> None:
        """Queue behaviours for the next requests: ("error", status) or ("slow", seconds); then normal replies."""
        with self._lock:
            self._script.extend(steps)

    def _next_step(self) -> tuple[str, Any]:
        with self._lock:
            return self._script.popleft() if self._script else ("ok", None)

    def __enter__(self) -> CohereServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()  # releases handlers stuck in a "slow" step
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                body = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout); nothing to answer

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = None
                with server._lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if self.path.rstrip("/") != "/v2/rerank":
                    self._send(404, {"message": f"no route {self.path}"})
                    return
                if (
                    not isinstance(body, dict)
                    or not isinstance(body.get("query"), str)
                    or not isinstance(body.get("documents"), list)
                ):
                    self._send(400, {"message": "body needs query (string) and documents (list)"})
                    return
                kind, arg = server._next_step()
                if kind == "slow":
                    if server._closing.wait(float(arg)):
                        return
                elif kind == "error":
                    echoed = self.headers.get("Authorization", "")
                    self._send(int(arg), {"message": f"scripted error {arg} for request with {echoed}"}, {"Retry-After": "0"})
                    return
                documents = [d if isinstance(d, str) else (d or {}).get("text", "") for d in body["documents"]]
                self._send(
                    200,
                    {
                        "id": str(uuid.uuid4()),
                        "results": rank_documents(body["query"], documents, body.get("top_n")),
                        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
                    },
                )

        return Handler
