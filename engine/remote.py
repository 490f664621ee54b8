"""A chat column backed by any OpenAI-compatible server (llama-server, vLLM, LM Studio, ollama).

``POST {URL}/v1/chat/completions`` with ``"stream": true``; the server-sent events are read as they
arrive (stdlib ``http.client``, no extra dependency). Time to first token and tokens/s are measured
here, on the client, one token per streamed content delta (what llama-server and vLLM send); the
server's model name comes from its chunks (or ``/v1/models``). ``max_tokens`` is sent and also
enforced here, so a server that streams forever is cut off. Every failure (not an http(s) URL,
refused, timeout, HTTP 4xx/5xx, a malformed stream) is a :class:`RemoteError` with one line.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.errors import QtuiError
from engine.quant.formats import FormatSpec, get_format
from engine.runtime import GenResult, GenSettings, Message, Token, detect_loop

TIMEOUT_S = 60.0  # connect, and between two reads of the stream


class RemoteError(QtuiError):
    """A remote endpoint that cannot be used: bad URL, unreachable, an HTTP error, a bad stream."""


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    path: str  # of /v1/chat/completions
    url: str  # as the user gave it

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """``http://host:port``, ``.../v1`` or ``.../v1/chat/completions``; anything but http(s) is refused."""
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"{url!r} is not an http(s) URL (e.g. http://127.0.0.1:8080)")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise RemoteError(f"{url!r}: bad port ({exc})") from None
        path = parts.path.rstrip("/")
        if not path.endswith("/chat/completions"):
            path = (path if path.endswith("/v1") else path + "/v1") + "/chat/completions"
        return cls(parts.scheme, parts.hostname, port, path, url.strip())


@dataclass
class RemoteColumn:
    """A column on a remote OpenAI-compatible endpoint; streams like ``engine.runtime.stream``."""

    endpoint: Endpoint
    model: str = ""  # the server's model name (from /v1/models or its chunks)
    timeout: float = TIMEOUT_S
    api_key: str | None = None
    fmt: FormatSpec = field(default_factory=lambda: get_format("bf16"))
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    warmed: bool = True

    @property
    def name(self) -> str:
        return f"remote {self.endpoint.host}:{self.endpoint.port}"

    @property
    def backend(self) -> str:
        model = f", model {self.model}" if self.model else ""
        return f"remote OpenAI API ({self.endpoint.base}{model})"

    def weight_bytes(self) -> int:
        return 0  # not measurable from here

    def warm_up(self, progress: object = None) -> None:
        """Nothing to warm: the server holds the model."""

    def close(self) -> None:
        pass

    # -------------------------------------------------------------------- http
    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.endpoint.scheme == "https" else http.client.HTTPConnection
        return cls(self.endpoint.host, self.endpoint.port, timeout=self.timeout)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def fetch_model(self) -> str:
        """The first model ``/v1/models`` lists ("" when the server does not say)."""
        conn = self._connection()
        try:
            conn.request(
                "GET",
                self.endpoint.path.removesuffix("/chat/completions") + "/models",
                headers=self._headers(),
            )
            resp = conn.getresponse()
            if resp.status != 200:
                return ""
            data = json.loads(resp.read() or b"{}")
            models = data.get("data") or data.get("models") or []
            return str(models[0].get("id") or models[0].get("name") or "") if models else ""
        except (OSError, http.client.HTTPException, ValueError, AttributeError, IndexError):
            return ""
        finally:
            conn.close()

    def _describe(self, exc: BaseException) -> str:
        where = f"{self.endpoint.host}:{self.endpoint.port}"
        if isinstance(exc, ConnectionRefusedError):
            return f"connection refused by {where} (is the server running?)"
        if isinstance(exc, socket.timeout | TimeoutError):
            return f"{where} did not answer within {self.timeout:g} s (timeout)"
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve {self.endpoint.host}"
        if isinstance(exc, RemoteError):
            return str(exc)
        return f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")

    def events(self, messages: list[Message], settings: GenSettings) -> Generator[dict[str, Any], None, None]:
        """The JSON objects of the server's SSE stream, as they arrive; :class:`RemoteError` on failure."""
        body: dict[str, Any] = {
            "messages": messages,
            "stream": True,
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "seed": settings.seed,
        }
        if self.model:
            body["model"] = self.model
        conn = self._connection()
        try:
            try:
                conn.request("POST", self.endpoint.path, json.dumps(body), self._headers())
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise RemoteError(self._describe(exc)) from None
            if resp.status >= 400:
                text = resp.read(2000).decode(errors="replace").strip()
                detail = _error_detail(text)
                raise RemoteError(
                    f"HTTP {resp.status} {resp.reason} from {self.endpoint.base}: {detail}".rstrip(": ")
                )
            for data in _sse_data(resp, self._describe):
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError:
                    raise RemoteError(
                        f"malformed stream from {self.endpoint.base}: {data[:80]!r} is not JSON"
                    ) from None
                if not isinstance(event, dict):
                    raise RemoteError(
                        f"malformed stream from {self.endpoint.base}: {data[:80]!r} is not an object"
                    )
                if "error" in event:
                    raise RemoteError(
                        f"{self.endpoint.base} sent an error: {_error_detail(json.dumps(event))}"
                    )
                yield event
        finally:
            conn.close()

    def stream(
        self,
        prompt: str | list[Message],
        settings: GenSettings = GenSettings(),
        cancel: threading.Event | None = None,
    ) -> Generator[Token, None, GenResult]:
        """Yield one token per content delta; the return value is the :class:`GenResult`. A failure
        raises :class:`RemoteError` (``engine.columns`` turns it into the column's message)."""
        messages: list[Message] = (
            [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        )
        if settings.system:
            messages = [{"role": "system", "content": settings.system}, *messages]
        result = GenResult()
        t0 = time.perf_counter()
        t_first = t_last = 0.0
        text: list[str] = []
        events = self.events(messages, settings)
        try:
            for event in events:
                if event.get("model") and not self.model:
                    self.model = str(event["model"])
                usage = event.get("usage") or {}
                if usage.get("prompt_tokens"):
                    result.prompt_tokens = int(usage["prompt_tokens"])
                choices = event.get("choices") or []
                if not choices:
                    continue
                choice = choices[0]
                if not isinstance(choice, dict):
                    raise RemoteError(
                        f"malformed stream from {self.endpoint.base}: a choice is not an object"
                    )
                piece = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                if piece:
                    now = time.perf_counter() - t0
                    if not result.token_ids:
                        t_first = now
                    t_last = now
                    result.token_ids.append(-1)  # the server sends text, not ids
                    text.append(str(piece))
                    yield Token(len(result.token_ids) - 1, -1, str(piece), now)
                if cancel is not None and cancel.is_set():
                    result.finish = "stopped"
                    break
                if len(result.token_ids) >= settings.max_new_tokens:
                    result.finish = "length"  # enforced here: a server may ignore max_tokens
                    break
                reason = choice.get("finish_reason")
                if reason:
                    result.finish = "length" if reason == "length" else "eos"
        finally:
            events.close()
        if not result.finish:
            result.finish = "stopped" if cancel is not None and cancel.is_set() else "eos"
        result.text = "".join(text)
        result.new_tokens = len(result.token_ids)
        result.total_s = time.perf_counter() - t0
        result.ttft_s = t_first
        result.prefill_tps = result.prompt_tokens / t_first if t_first > 0 and result.prompt_tokens else 0.0
        if result.new_tokens > 1 and t_last > t_first:
            result.decode_tps = (result.new_tokens - 1) / (t_last - t_first)
        result.looped = detect_loop([hash(p) for p in text])
        return result


def _error_detail(text: str) -> str:
    """The message of an OpenAI-style error body, else its first line."""
    try:
        data = json.loads(text)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message") if isinstance(err, dict) else err
        return str(msg).splitlines()[0][:200] if msg else ""
    except ValueError:
        return text.splitlines()[0][:200] if text else ""


def _sse_data(resp: http.client.HTTPResponse, describe: Any) -> Iterator[str]:
    """The ``data:`` payloads of a server-sent event stream (multi-line events joined)."""
    lines: list[str] = []
    while True:
        try:
            raw = resp.readline()
        except (OSError, http.client.HTTPException) as exc:
            raise RemoteError(describe(exc)) from None
        if not raw:
            if lines:
                yield "\n".join(lines)
            return
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        if line.startswith(":"):
            continue  # a comment / keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            lines.append(value.removeprefix(" "))
        elif name not in ("event", "id", "retry"):
            raise RemoteError(f"malformed stream: {line[:80]!r} is not a server-sent event line")


def open_column(url: str, timeout: float = TIMEOUT_S, api_key: str | None = None) -> RemoteColumn:
    """A remote column for ``url`` (checked now; the server is asked for its model name, briefly)."""
    column = RemoteColumn(Endpoint.parse(url), timeout=timeout, api_key=api_key)
    probe = RemoteColumn(column.endpoint, timeout=min(timeout, 3.0), api_key=api_key)
    column.model = probe.fetch_model()
    return column
