"""A local OpenAI-compatible chat-completions and embeddings server for tests, scriptable per request.

Serves `POST /v1/chat/completions` on 127.0.0.1 at a random port. By default it answers
with questions derived from the prompt's passage; `script` queues special replies
(`("status", 429)`, `("slow", seconds)`, `("text", "...")`) consumed one per request, and
`rules` maps a substring of the prompt to the reply every matching request gets.
`POST /v1/embeddings` answers with the bundled model's normalised vectors (loaded on the first
such request), as floats or base64 as the request asks; `embedded` lists every text it embedded.
Run as a module (`python -m tests.openai_server` or this file) to serve until killed,
printing the port first.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Action = tuple[str, Any]


def default_reply(prompt: str) -> str:
    """Two numbered questions naming the passage's first words, so each chunk's are unique."""
    passage = re.search(r'"""\n(.*?)\n"""', prompt, re.DOTALL)
    words = (passage.group(1) if passage else prompt).split()[:6]
    topic = " ".join(words)
    return f"Here are the questions:\n1. What does the text say about {topic}?\n2. Why does {topic} matter?"


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients killed or timed out mid-request are part of the tests, not server bugs.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class OpenAIServer:
    """Start with `start()`, stop with `stop()`; `url` is the api_base for the openai SDK."""

    def __init__(self, delay: float = 0.0) -> None:
        self.script: deque[Action] = deque()
        self.rules: dict[str, Action] = {}
        self.requests: list[dict[str, Any]] = []
        self.embedded: list[str] = []
        self._encoder: Any = None
        self.delay = delay  # every reply waits this long, to keep a run going for kill tests
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> OpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_action(self, body: dict[str, Any], prompt: str) -> Action | None:
        with self._lock:
            self.requests.append(body)
            for needle, action in self.rules.items():
                if needle in prompt:
                    return action
            return self.script.popleft() if self.script else None

    def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        """The embeddings object the openai SDK parses, for the texts of `body["input"]`."""
        texts = [body["input"]] if isinstance(body["input"], str) else list(body["input"])
        with self._lock:  # one model, loaded once, encoding one request at a time
            if self._encoder is None:
                from sentence_transformers import SentenceTransformer

                from llama_index_lancedb_tuning import resolve_model
                from llama_index_lancedb_tuning.encoding.model_ids import transformers_bars_off

                with transformers_bars_off():
                    self._encoder = SentenceTransformer(resolve_model(None), device="cpu")
            vectors = self._encoder.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            self.embedded.extend(texts)
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if as_base64 else v.tolist(),
            }
            for i, v in enumerate(vectors)
        ]
        tokens = sum(len(t.split()) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") == "/v1/embeddings":
                    return self._send(200, server.embeddings(body))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
                prompt = body["messages"][-1]["content"]
                prompt = prompt if isinstance(prompt, str) else json.dumps(prompt)
                action = server._next_action(body, prompt)
                if server.delay:
                    time.sleep(server.delay)
                text = default_reply(prompt)
                if action is not None:
                    kind, value = action
                    if kind == "status":
                        return self._send(
                            value,
                            {"error": {"message": f"scripted {value}", "type": "server_error", "code": None}},
                            {"Retry-After": "0"} if value == 429 else {},
                        )
                    if kind == "slow":
                        time.sleep(value)
                    elif kind == "text":
                        text = value
                self._send(200, completion(body.get("model", "gpt-4o-mini"), text))

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout); nothing to answer

        return Handler


def completion(model: str, text: str) -> dict[str, Any]:
    """The chat.completion object the openai SDK parses."""
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


if __name__ == "__main__":
    srv = OpenAIServer(delay=float(sys.argv[1]) if len(sys.argv) > 1 else 0.0).start()
    print(srv.url, flush=True)
    threading.Event().wait()
