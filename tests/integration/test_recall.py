"""Semantic recall on the real PostgreSQL + pgvector, rows written with SQL
(the projector is tested on its own): nearest live messages, superseded ones
excluded, a fork's inherited history up to the fork and not after, recursively,
never another role's or tenant's rows, exact and HNSW searches agreeing,
``as_of`` a commit, and a provider whose dimension disagrees with the store."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rolebus.config import Settings
from rolebus.endpoints import resolve
from rolebus.errors import ConfigError, StoreError
from rolebus.projectors.db import connect, migrate
from rolebus.projectors.embeddings import EmbeddingProvider, WordLlamaProvider, load_provider
from rolebus.projectors.recall import _RECALL, as_vector, recall, recall_text

pytestmark = [pytest.mark.postgres]

Conn = psycopg.AsyncConnection[Any]
T0 = datetime(2026, 11, 1, tzinfo=UTC)
PROVIDER = WordLlamaProvider.load()


@dataclass
class Store:
    conn: Conn
    provider: EmbeddingProvider
    schema: str

    async def role(self, role: str, *, tenant: str = "t1", seq: int = 0,
                   fork_of: str | None = None, fork_live: str | None = None) -> None:  # fmt: skip
        await self.conn.execute(
            "INSERT INTO roles (tenant_id, role_id, lifecycle, name, persona, seq, created_at,"
            " updated_at, forked_from_role, forked_live) VALUES"
            " (%s, %s, 'active', %s, '', %s, %s, %s, %s, %s::int8multirange)",
            (tenant, role, role, seq, T0, T0, fork_of, fork_live),
        )

    async def messages(self, role: str, texts: Sequence[str], *, tenant: str = "t1",
                       first_seq: int = 1, embed: bool = True) -> None:  # fmt: skip
        vectors = await self.provider.embed(texts)
        rows = [
            (tenant, role, first_seq + i, f"{role}-{first_seq + i}", uuid.uuid4(), text,
             T0 + timedelta(seconds=first_seq + i), vectors[i] if embed else None)
            for i, text in enumerate(texts)
        ]  # fmt: skip
        async with self.conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO messages (tenant_id, role_id, seq, message_id, event_id, author,"
                " content, occurred_at, embedding) VALUES (%s, %s, %s, %s, %s, 'user', %s, %s, %s)",
                rows,
            )

    async def supersede(self, role: str, seqs: Sequence[int], tenant: str = "t1") -> None:
        await self.conn.execute(
            "UPDATE messages SET superseded = true"
            " WHERE tenant_id = %s AND role_id = %s AND seq = ANY(%s)",
            (tenant, role, list(seqs)),
        )

    async def contents(self, role: str, text: str, k: int = 3, **kw: Any) -> list[str]:
        found = await recall_text(self.conn, self.provider, "t1", role, text, k, **kw)
        return [r.content for r in found]


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    async with connect(settings, resolve(settings), schema, autocommit=True) as conn:
        await migrate(conn, schema, embedding_dim=PROVIDER.dim, embedding_model=PROVIDER.name)
        yield Store(conn, PROVIDER, schema)


TOPICS = [
    "my invoice for march is wrong",
    "the weather is lovely and sunny today",
    "how do I reset my password",
    "the dragon attacks the castle at night",
    "my parcel was delivered to the wrong address",
]


async def test_nearest_live_messages_by_meaning(store: Store) -> None:
    await store.role("r1", seq=5)
    await store.messages("r1", TOPICS)
    found = await recall_text(
        store.conn, store.provider, "t1", "r1", "billing problem with an invoice", 5
    )
    assert found[0].content == "my invoice for march is wrong"
    assert [r.distance for r in found] == sorted(r.distance for r in found)
    assert {r.content for r in found} == set(TOPICS) and found[0].role_id == "r1"
    assert await store.contents("r1", "forgot my login credentials", 1) == [TOPICS[2]]
    assert await store.contents("r1", "", 3) == []  # nothing to embed, nothing recalled


async def test_superseded_and_unembedded_messages_are_skipped(store: Store) -> None:
    await store.role("r1", seq=7)
    await store.messages("r1", TOPICS)
    await store.messages("r1", ["the invoice total is too high"], first_seq=6, embed=False)
    await store.messages("r1", ["please refund the invoice"], first_seq=7)
    await store.supersede("r1", [1])
    got = await store.contents("r1", "billing problem with an invoice", 10)
    assert got[0] == "please refund the invoice"
    assert "my invoice for march is wrong" not in got
    assert "the invoice total is too high" not in got
    assert len(got) == 5


async def test_never_crosses_roles_or_tenants(store: Store) -> None:
    await store.role("r1", seq=1)
    await store.messages("r1", ["the weather is lovely and sunny today"])
    await store.role("r2", seq=1)
    await store.messages("r2", ["my invoice for march is wrong"])
    await store.role("r1", tenant="t2", seq=1)
    await store.messages("r1", ["please refund the invoice"], tenant="t2")
    assert await store.contents("r1", "invoice", 5) == ["the weather is lovely and sunny today"]
    assert await store.contents("nobody", "invoice", 5) == []


async def fork_family(store: Store) -> None:
    """src: 1..6, seq 3 superseded before the fork at seq 5 (live {[1,2],[4,5]}),
    seq 6 after the fork, seq 4 superseded after the fork by a rollback.
    fork: own 1..2, forked at src@5. grandchild: forked at fork@2."""
    await store.role("src", seq=6)
    await store.messages("src", [
        "src one: my invoice for march is wrong", "src two: the weather is sunny",
        "src three: the invoice was paid twice", "src four: refund the invoice please",
        "src five: the dragon attacks", "src six: invoice number is missing",
    ])  # fmt: skip
    await store.supersede("src", [3, 4])
    await store.role("fork", seq=2, fork_of="src", fork_live="{[1,2],[4,5]}")
    await store.messages("fork", ["fork one: my password expired", "fork two: invoice late fee"])
    await store.role("grand", seq=1, fork_of="fork", fork_live="{[1,1]}")
    await store.messages("grand", ["grand one: invoice in euros"])


async def test_a_fork_sees_its_source_up_to_the_fork(store: Store) -> None:
    await fork_family(store)
    got = set(await store.contents("fork", "invoice", 20))
    assert got == {
        "src one: my invoice for march is wrong", "src two: the weather is sunny",
        "src four: refund the invoice please", "src five: the dragon attacks",
        "fork one: my password expired", "fork two: invoice late fee",
    }  # fmt: skip
    # The source itself: its own live rows only, never the fork's.
    assert set(await store.contents("src", "invoice", 20)) == {
        "src one: my invoice for march is wrong", "src two: the weather is sunny",
        "src five: the dragon attacks", "src six: invoice number is missing",
    }  # fmt: skip


async def test_fork_history_is_inherited_recursively(store: Store) -> None:
    await fork_family(store)
    found = await recall_text(store.conn, store.provider, "t1", "grand", "invoice", 20)
    assert {(r.role_id, r.seq) for r in found} == {
        ("grand", 1), ("fork", 1), ("src", 1), ("src", 2), ("src", 4), ("src", 5),
    }  # fmt: skip
    cur = await store.conn.execute(
        "SELECT role_id, depth, live::text, extent FROM role_lineage('t1', 'grand') ORDER BY depth"
    )
    assert await cur.fetchall() == [
        ("grand", 0, None, 1),
        ("fork", 1, "{[1,2)}", 1),
        ("src", 2, "{[1,3),[4,6)}", 4),
    ]


async def recent(store: Store, role: str, limit: int, own_live: str | None = None) -> list[Any]:
    cur = await store.conn.execute(
        "SELECT role_id, seq FROM recent_visible_messages('t1', %s, %s, %s::int8multirange)",
        (role, limit, own_live),
    )
    return await cur.fetchall()


async def test_recent_visible_messages_newest_first_up_the_chain(store: Store) -> None:
    await fork_family(store)
    chain = [("grand", 1), ("fork", 1), ("src", 5), ("src", 4), ("src", 2), ("src", 1)]
    assert await recent(store, "grand", 10) == chain
    assert await recent(store, "grand", 3) == chain[:3]
    assert await recent(store, "src", 10) == [("src", 6), ("src", 5), ("src", 2), ("src", 1)]
    assert await recent(store, "src", 10, "{[1,2],[4,5]}") == [
        ("src", 5),
        ("src", 4),
        ("src", 2),
        ("src", 1),
    ]
    assert await recent(store, "fork", 0) == []
    # The same rows as visible_messages, the one definition.
    for role in ("src", "fork", "grand"):
        cur = await store.conn.execute(
            "SELECT role_id, seq FROM visible_messages('t1', %s)", (role,)
        )
        assert sorted(await cur.fetchall()) == sorted(await recent(store, role, 100))


async def test_exact_and_hnsw_searches_agree(store: Store) -> None:
    await fork_family(store)
    vector = (await store.provider.embed(["invoice trouble"]))[0]
    for role in ("src", "fork", "grand"):
        exact = await recall(store.conn, "t1", role, vector, 4, hnsw_factor=1e12)
        approx = await recall(store.conn, "t1", role, vector, 4, hnsw_factor=0)
        assert [(r.role_id, r.seq) for r in exact] == [(r.role_id, r.seq) for r in approx]
        assert len(exact) == 4


async def hnsw_scans(store: Store, role: str, hnsw_factor: float) -> list[str]:
    """The HNSW index scan lines of recall's plan, run (EXPLAIN ANALYZE)."""
    vector = (await store.provider.embed(["invoice trouble"]))[0]
    params = {"query": as_vector(vector), "tenant": "t1", "role": role, "k": 3,
              "hnsw_factor": hnsw_factor, "own_live": None}  # fmt: skip
    async with store.conn.transaction():
        # A tiny table is cheaper to scan than to search: make the index look
        # as cheap as it is on a large one.
        for plan in ("seqscan", "bitmapscan", "sort"):
            await store.conn.execute(
                sql.SQL("SET LOCAL {} = off").format(sql.Identifier(f"enable_{plan}"))
            )
        cur = await store.conn.execute(sql.SQL("EXPLAIN (ANALYZE, COSTS OFF) ") + _RECALL, params)
        lines = [row[0] for row in await cur.fetchall()]
    return [line.strip() for line in lines if "messages_embedding_hnsw" in line]


async def test_only_large_visible_sets_use_the_hnsw_index(store: Store) -> None:
    await fork_family(store)
    used = await hnsw_scans(store, "fork", hnsw_factor=0)
    assert used and not any("never executed" in line for line in used), used
    unused = await hnsw_scans(store, "fork", hnsw_factor=1e12)
    assert unused and all("never executed" in line for line in unused), unused
    await recall(store.conn, "t1", "src", [1.0] * store.provider.dim, 3)
    cur = await store.conn.execute("SHOW hnsw.iterative_scan")
    assert (await cur.fetchone()) == ("relaxed_order",)


async def test_recall_as_of_a_commit(store: Store) -> None:
    await fork_family(store)
    snapshot = {"seq": 5, "lineage": {"closed": [[1, 2]], "branch_start": 4}}
    await store.conn.execute(
        "INSERT INTO commits (commit_id, tenant_id, role_id, seq, kind, state_digest,"
        " occurred_at, event_id, snapshot) VALUES ('c5', 't1', 'src', 5, 'auto', 'd', %s, %s, %s)",
        (T0, uuid.uuid4(), json.dumps(snapshot)),
    )
    got = await store.contents("src", "invoice", 20, as_of="c5")
    # seq 4 is superseded now but was live at c5; seq 6 came later; seq 3 was not live.
    assert set(got) == {
        "src one: my invoice for march is wrong", "src two: the weather is sunny",
        "src four: refund the invoice please", "src five: the dragon attacks",
    }  # fmt: skip
    with pytest.raises(StoreError, match=r"commit 'c5' is not a commit of role 'fork'"):
        await store.contents("fork", "invoice", as_of="c5")


async def test_a_query_of_another_dimension_is_a_clear_error(store: Store) -> None:
    await store.role("r1", seq=5)
    await store.messages("r1", TOPICS)
    with pytest.raises(StoreError, match="different vector dimensions"):
        await recall(store.conn, "t1", "r1", [1.0, 0.0, 0.0], 3)


async def test_provider_dimension_must_match_the_store(settings: Settings) -> None:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    async with connect(settings, resolve(settings), schema, autocommit=True) as conn:
        await migrate(conn, schema, embedding_dim=384, embedding_model="minilm-384")
        provider = load_provider(settings)
        with pytest.raises(ConfigError, match=r"vector\(384\) .*'wordllama:l2_supercat_256'.* 256"):
            await migrate(conn, schema, embedding_dim=provider.dim, embedding_model=provider.name)
