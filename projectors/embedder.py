"""Embedding inside the projector: the retry policy that never loses a message.

``embed_contents`` calls the provider (``rolebus.projectors.embeddings``) once
per batch; a failing provider is retried a
few times with backoff, then every text of the batch gets the error instead
of a vector: the rows are written with ``embedding`` NULL and
``embedding_error`` set (``rolebus db reembed`` fills them later).

Invariants: the result has one entry per input text, in order; an entry is
either a vector of ``dim`` floats or an error string, never both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rolebus.errors import RolebusError
from rolebus.projectors.embeddings import EmbeddingProvider as Embedder

log = logging.getLogger(__name__)

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Embedded:
    vectors: list[Vector | None]
    errors: list[str | None]


RETRY_DELAYS_S: tuple[float, ...] = (0.05, 0.2, 0.8)
"""Waits between attempts: a few quick retries, then the rows go in without vectors."""


async def embed_contents(
    embedder: Embedder, texts: Sequence[str], delays: Sequence[float] = RETRY_DELAYS_S
) -> Embedded:
    if not texts:
        return Embedded([], [])
    error = ""
    for attempt in range(len(delays) + 1):
        try:
            matrix = await embedder.embed(texts)
            _check_shape(embedder, matrix, len(texts))
            return Embedded(list(matrix.astype(np.float32, copy=False)), [None] * len(texts))
        except RolebusError as exc:
            error = f"{embedder.name}: {exc}"
            log.warning("embedding %d texts failed (attempt %d): %s", len(texts), attempt + 1, exc)
        if attempt < len(delays):
            await asyncio.sleep(delays[attempt])
    return Embedded([None] * len(texts), [error] * len(texts))


def _check_shape(embedder: Embedder, matrix: npt.NDArray[np.float32], n: int) -> None:
    if matrix.shape != (n, embedder.dim):
        raise RolebusError(
            f"embedding provider {embedder.name!r} returned shape {matrix.shape} for {n} texts "
            f"(expected ({n}, {embedder.dim}))"
        )
