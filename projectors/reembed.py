"""``rolebus db reembed``: embed the messages whose embedding failed.

The projector never holds a message back for its embedding: after a few
retries it writes the row with ``embedding`` NULL and ``embedding_error``
set. This pass finds those rows (a partial index keeps that cheap), embeds
them in batches with the same retry policy, and writes the vectors.

Invariants: a row is updated only while it still has its error (a concurrent
pass cannot overwrite a newer vector); rows that fail again keep NULL with
the new error; each batch commits on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from rolebus.projectors.embedder import embed_contents
from rolebus.projectors.embeddings import EmbeddingProvider

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


@dataclass(frozen=True)
class Reembedded:
    fixed: int
    failed: int


async def reembed(conn: Conn, provider: EmbeddingProvider, batch: int = 256) -> Reembedded:
    fixed = failed = 0
    after: tuple[str, str, int] = ("", "", -1)
    while True:
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                "SELECT tenant_id, role_id, seq, content FROM messages"
                " WHERE embedding_error IS NOT NULL AND (tenant_id, role_id, seq) > (%s, %s, %s)"
                " ORDER BY tenant_id, role_id, seq LIMIT %s",
                (*after, batch),
            )
            rows = await cur.fetchall()
            if not rows:
                return Reembedded(fixed, failed)
            done = await embed_contents(provider, [str(r[3]) for r in rows])
            updates = [
                (vector, error, r[0], r[1], r[2])
                for r, vector, error in zip(rows, done.vectors, done.errors, strict=True)
            ]
            await cur.executemany(
                "UPDATE messages SET embedding = %s, embedding_error = %s"
                " WHERE tenant_id = %s AND role_id = %s AND seq = %s"
                " AND embedding_error IS NOT NULL",
                updates,
            )
        fixed += sum(e is None for e in done.errors)
        failed += sum(e is not None for e in done.errors)
        after = (str(rows[-1][0]), str(rows[-1][1]), int(rows[-1][2]))
