"""The OpenAI-compatible provider against a real HTTP server on 127.0.0.1 that
speaks ``POST /v1/embeddings`` (answers computed by the WordLlama provider):
batching, auth header, order, and clear errors for 500, malformed answers,
timeouts and a refused connection."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from rolebus.config import Settings, load_settings
from rolebus.errors import EmbeddingError
from rolebus.projectors.embeddings import WordLlamaProvider, load_provider

MODEL = WordLlamaProvider.load()


class EmbeddingsPeer(BaseHTTPRequestHandler):
    """/v1/embeddings answers; /broken/ -> 500, /garbled/ -> wrong shape,
    /slow/ -> waits 2 s. Every request is recorded on the server."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.path, self.headers.get("Authorization"), body))  # type: ignore[attr-defined]
        if self.path.startswith("/broken/"):
            return self._answer(500, {"error": {"message": "model crashed"}})
        if self.path.startswith("/garbled/"):
            return self._answer(200, {"data": [{"embedding": "not a list"}]})
        if self.path.startswith("/slow/"):
            time.sleep(2)
        if self.path in ("/v1/embeddings", "/slow/v1/embeddings"):
            vectors = MODEL.embed_sync(body["input"])
            # Reversed order with explicit indexes, as the protocol allows.
            data = [
                {"object": "embedding", "index": i, "embedding": vectors[i].tolist()}
                for i in reversed(range(len(vectors)))
            ]
            return self._answer(200, {"object": "list", "model": body["model"], "data": data})
        return self._answer(404, {"error": "no such path"})

    def _answer(self, status: int, payload: object) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        # The client may have given up (the timeout test).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def peer() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EmbeddingsPeer)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def http_settings(server: ThreadingHTTPServer, prefix: str = "", **env: str) -> Settings:
    base = f"http://127.0.0.1:{server.server_address[1]}{prefix}/v1"
    values = {"ROLEBUS_EMBEDDINGS": f"openai:{base}", "ROLEBUS_EMBEDDINGS_MODEL": "wl-256"}
    values.update({f"ROLEBUS_{k.upper()}": v for k, v in env.items()})
    return load_settings(env=values, config_file=None)


async def test_batches_in_order_with_the_probed_dimension(peer: ThreadingHTTPServer) -> None:
    provider = load_provider(http_settings(peer, embeddings_batch="3", embeddings_api_key="k1"))
    try:
        assert (provider.name, provider.dim) == ("openai:wl-256", 256)
        texts = [f"message {i} about invoices" if i % 2 else f"dragons {i}" for i in range(7)]
        got = await provider.embed(texts)
        assert got.dtype == np.float32 and got.shape == (7, 256)
        assert np.allclose(got, MODEL.embed_sync(texts), atol=1e-6)
    finally:
        await provider.aclose()
    sizes = [len(body["input"]) for _, _, body in peer.seen]  # type: ignore[attr-defined]
    assert sizes == [1, 3, 3, 1]  # the start-up probe, then batches of 3
    assert {auth for _, auth, _ in peer.seen} == {"Bearer k1"}  # type: ignore[attr-defined]
    assert {body["model"] for _, _, body in peer.seen} == {"wl-256"}  # type: ignore[attr-defined]


async def test_configured_dimension_skips_the_probe(peer: ThreadingHTTPServer) -> None:
    provider = load_provider(http_settings(peer, embeddings_dim="256"))
    assert peer.seen == []  # type: ignore[attr-defined]
    try:
        assert (await provider.embed(["hello"])).shape == (1, 256)
    finally:
        await provider.aclose()


async def test_server_error_is_retriable_and_named(peer: ThreadingHTTPServer) -> None:
    with pytest.raises(
        EmbeddingError, match=r"/broken/v1/embeddings: HTTP 500.*model crashed"
    ) as e:
        load_provider(http_settings(peer, "/broken"))
    assert e.value.retriable is True


async def test_malformed_answer_is_a_clear_error(peer: ThreadingHTTPServer) -> None:
    provider = load_provider(http_settings(peer, "/garbled", embeddings_dim="256"))
    try:
        with pytest.raises(EmbeddingError, match=r"malformed answer: .*embedding") as e:
            await provider.embed(["a"])
        assert e.value.retriable is False
    finally:
        await provider.aclose()


async def test_timeout_is_retriable_and_names_the_setting(peer: ThreadingHTTPServer) -> None:
    settings = http_settings(peer, "/slow", embeddings_dim="256", embeddings_timeout_s="0.3")
    provider = load_provider(settings)
    try:
        with pytest.raises(EmbeddingError, match="ROLEBUS_EMBEDDINGS_TIMEOUT_S") as e:
            await provider.embed(["a"])
        assert e.value.retriable is True
    finally:
        await provider.aclose()


def test_refused_connection_is_retriable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "ROLEBUS_EMBEDDINGS": f"openai:http://127.0.0.1:{port}/v1",
        "ROLEBUS_EMBEDDINGS_MODEL": "m",
    }
    with pytest.raises(EmbeddingError, match="unreachable") as e:
        load_provider(load_settings(env=env, config_file=None))
    assert e.value.retriable is True


async def test_unknown_path_is_not_retriable(peer: ThreadingHTTPServer) -> None:
    with pytest.raises(EmbeddingError, match="HTTP 404") as e:
        load_provider(http_settings(peer, "/nowhere/x"))
    assert e.value.retriable is False
