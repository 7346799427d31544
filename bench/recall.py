"""bench/recall: `recall` latency (p95) vs the raw pgvector query over the same
rows, and recall@10 vs exact search, at 100k messages.

Steps (progress on stderr, a table and a JSON file in bench/results at the end):

1. generate N varied chat messages (seeded templates over many topics), embed
   them with the WordLlama provider and COPY them into a fresh store schema:
   most in one role ("main", ~8% superseded by a rollback), a fork of it
   (inheriting main's live history up to the fork point, plus its own), and
   other roles and another tenant around them, so filters have work to do;
   the HNSW index is built after the load, as a migration on a full table would;
2. for Q query texts (another seed), per query in a rotating order:
   - raw: ``SELECT <recall's columns> FROM messages WHERE tenant_id = $t AND
     role_id = $r AND NOT superseded ORDER BY embedding <=> $q LIMIT k``
     (pgvector's default settings),
   - ``rolebus.projectors.recall.recall`` for main (the same rows), for the fork,
     and for a small role (~1% of the rows, where recall searches exactly),
   - exact: the same ORDER BY with index scans off (the ground truth);
3. report p50/p95 latencies, ratio recall p95 / raw p95 (goal <= 1.3) and
   recall@10 vs exact (goal >= 0.95), for main and for the fork.

Without ROLEBUS_PG_DSN a private local stack is started (bench/common.py).

    python bench/recall.py [--messages 100000] [--queries 200] [-k 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from common import bench_settings, console, save, say
from pgvector import Vector
from psycopg import sql
from rich.table import Table

from rolebus.config import Settings, load_settings
from rolebus.endpoints import resolve
from rolebus.projectors.db import connect, migrate
from rolebus.projectors.embeddings import WordLlamaProvider
from rolebus.projectors.recall import recall

GOAL_RATIO = 1.3
GOAL_RECALL = 0.95
TENANT, OTHER_TENANT, MAIN, FORK = "t-bench", "t-other", "main", "main-fork"
SMALL = "other-1"  # ~1.25% of the rows: searched exactly, not with HNSW

TOPICS = {
    "billing": "invoice refund charge payment card receipt subscription price discount tax",
    "account": "password login email username reset locked verification profile settings",
    "shipping": "parcel delivery courier tracking address warehouse delay package box",
    "weather": "rain storm sunshine forecast snow wind cloud temperature umbrella heat",
    "cooking": "recipe oven pasta garlic bake soup spice dough dinner kitchen",
    "football": "match goal striker referee penalty league coach stadium season fans",
    "music": "guitar concert album song drummer melody band piano lyrics festival",
    "travel": "flight hotel passport luggage train airport beach museum booking visa",
    "health": "doctor fever headache appointment medicine sleep exercise diet pain",
    "dragons": "dragon castle knight sword quest treasure wizard dungeon fire armor",
    "space": "rocket planet orbit astronaut telescope galaxy moon launch satellite",
    "garden": "tomato seeds soil flowers watering roses compost hedge lawn tree",
    "code": "python bug deploy server database query timeout memory crash build",
    "school": "homework exam teacher grades essay lesson math history science class",
    "cars": "engine tyre brake fuel garage mechanic battery oil gearbox license",
    "pets": "puppy cat vet leash food walk toys litter training collar",
}
TEMPLATES = [
    "I have a question about the {a} and the {b}",
    "my {a} is wrong since {n} days, can you check the {b}?",
    "please tell me more about {a}, {b} and {c}",
    "the {a} broke again right after the {b}",
    "could we talk about {a} instead of {b} today",
    "what is the best {a} for a {b} around {n}",
    "thanks, the {a} works now but the {b} still fails",
    "remember that story with the {a}, the {b} and the {c}?",
    "is there a cheaper {a} without the {b}",
    "I love {a}, especially when the {b} is ready",
]


NAMES = [
    "Ana",
    "Ben",
    "Chloe",
    "Dmitri",
    "Emma",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kofi",
    "Lena",
    "Mateo",
    "Nadia",
]
JOINS = (". Also,", ", and", " but", ". By the way,", " because", ". Then")


def texts(count: int, seed: int) -> list[str]:
    """Varied chat lines: one or two clauses, each a template over a topic's
    words (sometimes mixed with a second topic), a name and numbers, so that
    exact duplicates are rare, as in real conversations."""
    rng = random.Random(seed)
    words = {name: line.split() for name, line in TOPICS.items()}
    names = sorted(words)

    def clause() -> str:
        topic = words[rng.choice(names)]
        mixed = topic if rng.random() < 0.7 else topic + words[rng.choice(names)]
        a, b, c = rng.sample(mixed, 3)
        return rng.choice(TEMPLATES).format(a=a, b=b, c=c, n=rng.randint(2, 900))

    out = []
    for _ in range(count):
        line = f"{rng.choice(NAMES)}: {clause()}"
        if rng.random() < 0.6:
            line += f"{rng.choice(JOINS)} {clause()}"
        out.append(line)
    return out


@dataclass(frozen=True)
class Layout:
    """Who owns which generated message (seq is per role, from 1)."""

    rows: list[tuple[str, str, int, bool]]
    """(tenant, role, seq, superseded) per message, in generation order."""
    fork_live: tuple[int, int]
    """main's seqs the fork inherited (inclusive; main had no rollback before)."""


def plan_layout(total: int) -> Layout:
    main = int(total * 0.7)
    fork_at = main // 2
    fork_own = int(total * 0.05)
    superseded = range(int(main * 0.8), int(main * 0.88))  # a rollback after the fork
    rows = [(TENANT, MAIN, s, s in superseded) for s in range(1, main + 1)]
    rows += [(TENANT, FORK, s, False) for s in range(1, fork_own + 1)]
    rest = total - len(rows)
    for i in range(rest):
        tenant = TENANT if i % 2 else OTHER_TENANT
        rows.append((tenant, f"other-{i % 20}", i // 20 + 1, False))
    return Layout(rows, (1, fork_at))


def last_seq(layout: Layout, role: str) -> int:
    return max(seq for tenant, r, seq, _ in layout.rows if (tenant, r) == (TENANT, role))


async def load(conn: Any, layout: Layout, vectors: np.ndarray, lines: list[str]) -> None:
    """COPY the messages and two roles rows, then build the HNSW index."""
    now = datetime(2026, 11, 1, tzinfo=UTC)
    await conn.execute("DROP INDEX IF EXISTS messages_embedding_hnsw")
    async with conn.cursor() as cur:
        columns = "tenant_id, role_id, seq, message_id, event_id, author, content, "
        columns += "occurred_at, superseded, embedding"
        async with cur.copy(f"COPY messages ({columns}) FROM STDIN") as copy:
            for i, (tenant, role, seq, gone) in enumerate(layout.rows):
                at = now + timedelta(seconds=i)
                author = "user" if seq % 2 else "assistant"
                await copy.write_row(
                    (tenant, role, seq, f"m{i}", uuid.uuid4(), author, lines[i], at, gone,
                     Vector(vectors[i]))
                )  # fmt: skip
        await cur.execute(
            "INSERT INTO roles (tenant_id, role_id, lifecycle, name, persona, seq,"
            " created_at, updated_at, forked_from_role, forked_live) VALUES"
            " (%s, %s, 'active', 'main', '', %s, %s, %s, NULL, NULL),"
            " (%s, %s, 'active', 'fork', '', %s, %s, %s, %s,"
            " int8multirange(int8range(%s, %s, '[]')))",
            (
                TENANT,
                MAIN,
                last_seq(layout, MAIN),
                now,
                now,
                TENANT,
                FORK,
                last_seq(layout, FORK),
                now,
                now,
                MAIN,
                *layout.fork_live,
            ),
        )
        await cur.execute("SET maintenance_work_mem = '512MB'")
        await cur.execute(
            "CREATE INDEX messages_embedding_hnsw ON messages"
            " USING hnsw (embedding vector_cosine_ops)"
        )
        await cur.execute("ANALYZE messages")
    await conn.commit()


# --- measuring -------------------------------------------------------------------------

# The same columns recall returns, so both move the same bytes.
RAW = (
    "SELECT role_id, seq, message_id, author, content, occurred_at, embedding <=> %(q)s"
    " FROM messages WHERE tenant_id = %(t)s AND role_id = %(r)s"
    " AND NOT superseded ORDER BY embedding <=> %(q)s LIMIT %(k)s"
)
EXACT = (
    "SELECT embedding <=> %(q)s FROM visible_messages(%(t)s, %(r)s) WHERE embedding IS NOT NULL"
    " ORDER BY embedding <=> %(q)s LIMIT %(k)s"
)


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = await call()
    return time.perf_counter() - started, out


async def exact_distances(conn: Any, role: str, vector: Vector, k: int) -> list[float]:
    """Ground truth: the same visible rows, no index scan (a full sort)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL enable_indexscan = off")
        cur = await conn.execute(EXACT, {"q": vector, "t": TENANT, "r": role, "k": k})
        return [row[0] for row in await cur.fetchall()]


def hits(found: Sequence[float], exact: Sequence[float], k: int) -> float:
    """recall@k with ties: a found row counts when it is as near as the k-th exact one."""
    return sum(d <= exact[-1] + 1e-6 for d in found) / k if exact else 1.0


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(seconds: Sequence[float], recalls: Sequence[float] | None = None) -> dict[str, Any]:
    out = {
        "p50_ms": percentile(seconds, 0.5) * 1e3,
        "p95_ms": percentile(seconds, 0.95) * 1e3,
        "mean_ms": statistics.fmean(seconds) * 1e3,
    }
    if recalls is not None:
        out["recall_at_k"] = statistics.fmean(recalls)
        out["worst_query_recall"] = min(recalls)
    return out


async def measure(settings: Settings, schema: str, queries: np.ndarray, k: int) -> dict[str, Any]:
    """Per query: the three timed searches in a rotating order (none always runs
    right after another's cache footprint), then the exact searches (truth)."""
    ends = resolve(settings)
    series: dict[str, list[float]] = {n: [] for n in ("raw", "main", "fork", "small")}
    quality: dict[str, list[float]] = {n: [] for n in ("raw", "main", "fork", "small")}
    async with (
        connect(settings, ends, schema, autocommit=True) as raw_conn,
        connect(settings, ends, schema, autocommit=True) as conn,
    ):
        searches: dict[str, Callable[[np.ndarray], Awaitable[list[float]]]] = {
            "raw": lambda q: raw_search(raw_conn, Vector(q), k),
            "main": lambda q: recall_distances(conn, MAIN, q, k),
            "fork": lambda q: recall_distances(conn, FORK, q, k),
            "small": lambda q: recall_distances(conn, SMALL, q, k),
        }
        for query in queries[:10]:  # caches, prepared statements, session settings
            for search in searches.values():
                await search(query)
        for i, query in enumerate(queries):
            names = list(searches)[i % 4 :] + list(searches)[: i % 4]
            found = {}
            for name in names:
                seconds, found[name] = await timed(lambda n=name, q=query: searches[n](q))
                series[name].append(seconds)
            for name, role in (("raw", MAIN), ("main", MAIN), ("fork", FORK), ("small", SMALL)):
                exact = await exact_distances(raw_conn, role, Vector(query), k)
                quality[name].append(hits(found[name], exact, k))
    return {name: summary(series[name], quality[name]) for name in series}


async def raw_search(conn: Any, vector: Vector, k: int) -> list[float]:
    cur = await conn.execute(RAW, {"q": vector, "t": TENANT, "r": MAIN, "k": k})
    return [row[-1] for row in await cur.fetchall()]


async def recall_distances(conn: Any, role: str, query: np.ndarray, k: int) -> list[float]:
    return [found.distance for found in await recall(conn, TENANT, role, query, k)]


# --- the run ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/recall.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--messages", type=int, default=100_000, help="messages in the store")
    p.add_argument("--queries", type=int, default=200, help="query texts (measured each)")
    p.add_argument("-k", type=int, default=10, help="neighbours per query")
    return p.parse_args(argv)


async def run(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    provider = WordLlamaProvider.load()
    lines = texts(args.messages, seed=1)
    seconds, vectors = await timed(lambda: asyncio.to_thread(provider.embed_sync, lines))
    say(f"embedded {len(lines):,} messages in {seconds:.1f}s ({len(lines) / seconds:,.0f}/s)")
    layout = plan_layout(args.messages)
    schema = f"bench_recall_{uuid.uuid4().hex[:8]}"
    async with connect(settings, resolve(settings), schema) as conn:
        await migrate(conn, schema, embedding_dim=provider.dim, embedding_model=provider.name)
        load_s, _ = await timed(lambda: load(conn, layout, vectors, lines))
        say(f"COPY + HNSW index build: {load_s:.1f}s")
        try:
            queries = provider.embed_sync(texts(args.queries, seed=2))
            say(f"measuring {args.queries} queries, k={args.k}")
            result = await measure(settings, schema, queries, args.k)
        finally:
            await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
            await conn.commit()
    main_rows = sum(1 for t, r, _, gone in layout.rows if (t, r) == (TENANT, MAIN) and not gone)
    return {
        "messages": args.messages, "queries": args.queries, "k": args.k,
        "main_visible": main_rows, "embed_per_s": len(lines) / seconds, "load_s": load_s,
        **result, "ratio_p95": result["main"]["p95_ms"] / result["raw"]["p95_ms"],
        "ratio_p50": result["main"]["p50_ms"] / result["raw"]["p50_ms"],
        "goal_ratio": GOAL_RATIO, "goal_recall": GOAL_RECALL,
    }  # fmt: skip


def show(result: dict[str, Any]) -> None:
    k = result["k"]
    table = Table(title=f"bench/recall: {result['messages']:,} messages, k={k}")
    for column in ("search", "p50 ms", "p95 ms", f"recall@{k}"):
        table.add_column(column, justify="left" if column == "search" else "right")
    names = {
        "raw": f"raw ORDER BY <=> LIMIT (main, {result['main_visible']:,} live rows)",
        "main": "rolebus recall (main)",
        "fork": "rolebus recall (fork: inherited + own)",
        "small": "rolebus recall (small role: exact search)",
    }
    for key, label in names.items():
        row = result[key]
        table.add_row(label, f"{row['p50_ms']:.2f}", f"{row['p95_ms']:.2f}",
                      f"{row['recall_at_k']:.3f}")  # fmt: skip
    table.add_row("ratio recall (main) / raw", f"{result['ratio_p50']:.2f}",
                  f"{result['ratio_p95']:.2f} (goal <= {GOAL_RATIO})",
                  f"goal >= {GOAL_RECALL}")  # fmt: skip
    console.print(table)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if os.environ.get("ROLEBUS_PG_DSN"):
        result = asyncio.run(run(load_settings(), args))
    else:
        with bench_settings() as settings:
            result = asyncio.run(run(settings, args))
    show(result)
    say(f"saved {save('recall', result)}")


if __name__ == "__main__":
    main()
