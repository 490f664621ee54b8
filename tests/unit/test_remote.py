"""Remote columns (engine.remote): a real OpenAI-compatible server on 127.0.0.1 (llama.cpp's own,
in-process through xllamacpp, on an exported tiny GGUF) and a stdlib fake for every way a server
can fail; each failure is one line in the column while the other columns go on."""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import time

import pytest

from engine import columns, llamacpp, remote
from engine.remote import Endpoint, RemoteError
from engine.runtime import GenSettings
from tests.helpers import quantize_saved
from tests.tiny_gguf import gguf_source

SETTINGS = GenSettings(max_new_tokens=8)


def chunk(text, finish=None, model="fake-model"):
    return {"model": model, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


class Fake(http.server.BaseHTTPRequestHandler):
    """Behaves as ``self.server.mode`` says: ok, error500, notfound, malformed, plain, silent, forever."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"data": [{"id": "fake-model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        self.server.requests.append(json.loads(self.rfile.read(length)))
        mode = self.server.mode
        if mode == "silent":
            time.sleep(3)
            return
        if mode in ("error500", "notfound"):
            status = 500 if mode == "error500" else 404
            body = json.dumps({"error": {"message": f"{mode} happened", "code": status}}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        if mode == "plain":
            self.wfile.write(b'{"choices": []}\n')
            return
        events = [chunk("Hel"), chunk("lo"), chunk(" there", "stop")]
        if mode == "malformed":
            events = [chunk("Hel"), "{not json"]
        try:
            if mode == "forever":
                i = 0
                while True:
                    self.wfile.write(f"data: {json.dumps(chunk(f' w{i}'))}\n\n".encode())
                    self.wfile.flush()
                    i += 1
            for e in events:
                data = e if isinstance(e, str) else json.dumps(e)
                self.wfile.write(f": keep-alive\n\ndata: {data}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def fake():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    server.mode = "ok"
    server.requests = []
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url(server):
    return f"http://127.0.0.1:{server.server_address[1]}"


def run(col, settings=SETTINGS):
    return columns.generate(col, "hi", settings)


def test_endpoint_forms():
    assert Endpoint.parse("http://h:8080").path == "/v1/chat/completions"
    assert Endpoint.parse("http://h:8080/v1/").path == "/v1/chat/completions"
    assert Endpoint.parse("https://h/api/v1/chat/completions").path == "/api/v1/chat/completions"
    assert Endpoint.parse("https://h").port == 443


@pytest.mark.parametrize("bad", ["ftp://h:21", "127.0.0.1:8080", "file:///etc/passwd", "http://"])
def test_not_http_is_refused_in_one_line(bad):
    with pytest.raises(RemoteError, match="is not an http\\(s\\) URL"):
        remote.open_column(bad)


def test_streams_with_client_side_timings_and_model_name(fake):
    col = columns.open_column(f"remote:{url(fake)}")
    assert col.model == "fake-model" and "fake-model" in col.backend
    tokens = []
    result = columns.generate(col, "hi", SETTINGS, on_token=tokens.append)
    assert result.text == "Hello there" and [t.text for t in tokens] == ["Hel", "lo", " there"]
    assert result.finish == "eos" and result.new_tokens == 3 and not result.error
    assert result.ttft_s > 0 and result.decode_tps > 0
    sent = fake.requests[-1]
    assert sent["stream"] is True and sent["max_tokens"] == 8 and sent["model"] == "fake-model"
    assert sent["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("error500", r"HTTP 500 .*: error500 happened$"),
        ("notfound", r"HTTP 404 .*: notfound happened$"),
        ("malformed", r"malformed stream from .*'\{not json' is not JSON"),
        ("plain", r"malformed stream: .* is not a server-sent event line"),
    ],
)
def test_server_errors_become_one_line_in_the_column(fake, mode, message):
    fake.mode = mode
    result = run(remote.open_column(url(fake)))
    assert result.error and "\n" not in result.error
    assert re.search(message, result.error), result.error


def test_timeout(fake):
    fake.mode = "silent"
    col = remote.open_column(url(fake), timeout=0.5)
    t0 = time.perf_counter()
    result = run(col)
    assert "did not answer within 0.5 s (timeout)" in result.error
    assert time.perf_counter() - t0 < 2.5


def test_refused():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run(remote.open_column(f"http://127.0.0.1:{port}", timeout=2))
    assert result.error == f"connection refused by 127.0.0.1:{port} (is the server running?)"


def test_a_server_that_streams_forever_is_cut_at_max_tokens(fake):
    fake.mode = "forever"
    result = run(remote.open_column(url(fake)), GenSettings(max_new_tokens=5))
    assert result.finish == "length" and result.new_tokens == 5 and "max-tokens" in result.flags
    assert result.text == " w0 w1 w2 w3 w4"


def test_others_go_on_when_a_remote_column_fails(fake):
    from engine.multichat import round_robin

    good, bad = remote.open_column(url(fake)), remote.open_column(url(fake))
    good_stream = columns.stream(good, "hi", SETTINGS)
    first = next(good_stream)  # its request is answered (mode ok); the next request fails
    fake.mode = "error500"
    done = {}
    streams = {"good": good_stream, "bad": columns.stream(bad, "hi", SETTINGS)}
    round_robin(streams, lambda k, t: None, lambda k, r: done.__setitem__(k, r))
    assert first.text == "Hel" and done["good"].text.endswith("lo there") and not done["good"].error
    assert done["bad"].error.startswith("HTTP 500")


@pytest.mark.skipif(llamacpp.version() is None, reason="xllamacpp is not installed")
def test_real_llama_server_on_127_0_0_1(tmp_path):
    """llama.cpp's own HTTP server (xllamacpp, in-process) on an exported tiny GGUF."""
    src = gguf_source(tmp_path)
    folder, _ = quantize_saved(src, "int4-g32-sym", out=tmp_path / "v")
    local = columns.open_column(f"{folder}@llama.cpp", threads=1)
    try:
        address = local.server.listening_address
        assert address.startswith("http://127.0.0.1:")
        col = columns.open_column(address)
        assert col.model.endswith(".gguf")  # llama-server names its model by file
        result = run(col, GenSettings(max_new_tokens=6))
        assert not result.error, result.error
        assert result.finish == "length" and 1 <= result.new_tokens <= 6 and result.ttft_s > 0
    finally:
        columns.close(local)


def test_cli_chat_with_remote_columns(fake, capsys):
    from qtui.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    argv = ["chat", "--remote", url(fake), "--remote", f"http://127.0.0.1:{dead}", "--prompt", "hi", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["text"] == "Hello there" and out[0]["error"] == "" and "fake-model" in out[0]["backend"]
    assert out[1]["error"].startswith("connection refused by 127.0.0.1") and out[1]["text"] == ""
    assert main(["chat", "--remote", "ftp://x", "--prompt", "hi"]) == 1
    assert "is not an http(s) URL" in capsys.readouterr().err
