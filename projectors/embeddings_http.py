"""An OpenAI-compatible embeddings endpoint as an ``EmbeddingProvider``.

``ROLEBUS_EMBEDDINGS=openai:<base url>`` (e.g. ``http://127.0.0.1:11434/v1`` for
Ollama, ``https://api.openai.com/v1``) with ``ROLEBUS_EMBEDDINGS_MODEL``; the
request is ``POST <base>/embeddings {"model": M, "input": [texts]}`` and the
answer ``{"data": [{"index": i, "embedding": [floats]}, ...]}``.

Invariants: texts go in batches of ``ROLEBUS_EMBEDDINGS_BATCH``, each request
bounded by ``ROLEBUS_EMBEDDINGS_TIMEOUT_S``; timeouts, refused connections,
429 and 5xx raise a retriable ``EmbeddingError``, any other status or an
answer that does not fit the protocol a non-retriable one naming the URL.
The vector size is ``ROLEBUS_EMBEDDINGS_DIM`` or, unset, learnt at load from
one probe request, and every answer is checked against it. Building the body
and reading the answer are pure functions shared by the probe and ``embed``.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import numpy as np

from rolebus.config import Settings
from rolebus.errors import EmbeddingError
from rolebus.projectors.embeddings import Vectors, normalize

# Connection failures before a request was sent are safe to retry at once.
CONNECT_RETRIES = 2
PROBE_TEXT = "dimension probe"


def endpoint_url(base: str) -> str:
    """``<base>/embeddings`` unless the URL already names that path."""
    base = base.rstrip("/")
    return base if base.endswith("/embeddings") else base + "/embeddings"


def request_body(model: str, texts: Sequence[str]) -> dict[str, object]:
    return {"model": model, "input": list(texts)}


def parse_answer(url: str, payload: object, count: int, dim: int | None) -> Vectors:
    """The vectors of a decoded JSON answer, in input order, or a clear error."""

    def bad(rule: str) -> EmbeddingError:
        return EmbeddingError(f"embeddings endpoint {url}: malformed answer: {rule}")

    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise bad('expected a JSON object with a "data" list')
    if len(data) != count:
        raise bad(f"{len(data)} embeddings for {count} inputs")
    rows: list[list[float]] = [[] for _ in range(count)]
    for position, item in enumerate(data):
        index = item.get("index", position) if isinstance(item, dict) else None
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or rows[index]:
            raise bad(f"item {position} has a missing, repeated or out-of-range index")
        if not isinstance(vector, list) or not vector:
            raise bad(f'item {position} has no "embedding" list of numbers')
        rows[index] = vector
    sizes = {len(row) for row in rows}
    if len(sizes) != 1 or (dim is not None and sizes != {dim}):
        raise bad(f"vector sizes {sorted(sizes)} (expected {dim or 'one size'})")
    try:
        return normalize(np.array(rows, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise bad(f"embeddings must be lists of numbers ({exc})") from exc


def check_response(url: str, response: httpx.Response) -> object:
    """The decoded JSON body of a 2xx answer; an ``EmbeddingError`` otherwise."""
    status = response.status_code
    if status != 200:
        snippet = response.text[:200].replace("\n", " ")
        retriable = status == 429 or status >= 500
        hint = " (check ROLEBUS_EMBEDDINGS_API_KEY)" if status in (401, 403) else ""
        raise EmbeddingError(
            f"embeddings endpoint {url}: HTTP {status}{hint}: {snippet}", retriable=retriable
        )
    try:
        return response.json()
    except ValueError as exc:
        raise EmbeddingError(f"embeddings endpoint {url}: malformed answer: not JSON") from exc


def transport_error(url: str, exc: httpx.HTTPError, timeout_s: float) -> EmbeddingError:
    if isinstance(exc, httpx.TimeoutException):
        return EmbeddingError(
            f"embeddings endpoint {url}: no answer within {timeout_s:g}s "
            "(ROLEBUS_EMBEDDINGS_TIMEOUT_S)",
            retriable=True,
        )
    return EmbeddingError(f"embeddings endpoint {url}: unreachable ({exc!r})", retriable=True)


class OpenAIProvider:
    """Batches texts into ``/embeddings`` requests over one pooled client."""

    def __init__(self, url: str, settings: Settings, dim: int) -> None:
        self._url = url
        self._model = settings.embeddings_model or ""
        self._batch = settings.embeddings_batch
        self._timeout_s = settings.embeddings_timeout_s
        self._headers = _headers(settings)
        self._client: httpx.AsyncClient | None = None
        self.name = f"openai:{self._model}"
        self.dim = dim

    @classmethod
    def load(cls, base: str, settings: Settings) -> OpenAIProvider:
        url = endpoint_url(base)
        dim = settings.embeddings_dim or _probe_dim(url, settings)
        return cls(url, settings, dim)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        chunks = [
            await self._embed_batch(texts[i : i + self._batch])
            for i in range(0, len(texts), self._batch)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)

    async def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        if self._client is None:  # created inside the running loop that uses it
            self._client = httpx.AsyncClient(
                headers=self._headers,
                timeout=self._timeout_s,
                transport=httpx.AsyncHTTPTransport(retries=CONNECT_RETRIES),
            )
        try:
            response = await self._client.post(self._url, json=request_body(self._model, texts))
        except httpx.HTTPError as exc:
            raise transport_error(self._url, exc, self._timeout_s) from exc
        payload = check_response(self._url, response)
        return parse_answer(self._url, payload, len(texts), self.dim)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _headers(settings: Settings) -> dict[str, str]:
    key = settings.embeddings_api_key
    return {"Authorization": f"Bearer {key}"} if key else {}


def _probe_dim(url: str, settings: Settings) -> int:
    """One blocking request at start-up: ``dim`` must be known before ``migrate``."""
    model = settings.embeddings_model or ""
    timeout_s = settings.embeddings_timeout_s
    transport = httpx.HTTPTransport(retries=CONNECT_RETRIES)
    with httpx.Client(headers=_headers(settings), timeout=timeout_s, transport=transport) as c:
        try:
            response = c.post(url, json=request_body(model, [PROBE_TEXT]))
        except httpx.HTTPError as exc:
            raise transport_error(url, exc, timeout_s) from exc
    payload = check_response(url, response)
    return int(parse_answer(url, payload, 1, None).shape[1])
