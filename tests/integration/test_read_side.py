"""The read side on the real PostgreSQL: queries and CLI commands over rows
inserted with SQL (the projector's tables, migration 001), one schema per test.

The story seeded in tenant ``acme``: role ``r1`` is created (commit c1),
activated (c2), talks (seqs 3-6), is tagged ``v1`` (c3, seq 7), hallucinates
(seqs 8-9), is rolled back to c3 (c4, seq 10: 8-9 superseded) and talks on
(seq 11). Role ``f1`` is forked from r1 at c3 and says one thing of its own.
Tenant ``other`` has a role with the same id ``r1`` and its own secrets.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.multirange import Multirange
from psycopg.types.range import Range

from rolebus.config import Settings
from rolebus.endpoints import resolve
from rolebus.projectors import queries
from rolebus.projectors.db import connect, migrate
from rolebus.projectors.embeddings import WordLlamaProvider
from rolebus.projectors.views import UnknownCommitError, UnknownRoleError

pytestmark = [pytest.mark.postgres]
PROVIDER = WordLlamaProvider.load()
"""The offline default provider (real weights from the wheel), shared by the tests."""

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
Conn = psycopg.AsyncConnection[tuple[object, ...]]
RunCli = Callable[..., subprocess.CompletedProcess[str]]


def cid(name: str) -> str:
    """A commit id shaped like the real ones (64 hex chars)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, name).hex * 2


def live(*pairs: tuple[int, int]) -> Multirange[int]:
    return Multirange([Range(a, b + 1) for a, b in pairs])


@dataclass
class Store:
    settings: Settings
    schema: str
    conn: Conn

    @property
    def env(self) -> dict[str, str]:
        return {"ROLEBUS_PG_DSN": resolve(self.settings).pg_dsn, "ROLEBUS_PG_SCHEMA": self.schema}


MESSAGES = {  # seq -> (author, content)
    3: ("user", "my invoice for march is wrong"),
    4: ("assistant", "I am sorry [bold]about[/bold] that, let me check."),
    5: ("user", "it says 40 euros"),
    6: ("assistant", "The right amount is 30 euros."),
    8: ("user", "and april?"),
    9: ("assistant", "April was free forever (hallucinated)"),
    11: ("user", "thanks, bye"),
}


def snapshot(role: str, seq: int, lifecycle: str, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "role_id": role, "tenant_id": "acme", "lifecycle": lifecycle, "name": "Billing helper",
        "persona": "You are a careful billing assistant.", "traits": {"tone": "warm"},
        "model": "m-1", "skills": [], "seq": seq,
        "counters": {"messages": {}, "tokens_in": 0, "tokens_out": 0, "tool_calls": 0,
                     "flags": {}, "persona_updates": 0, "rollbacks": 0},
        "messages": [
            {"message_id": f"m{s}", "seq": s, "role_id": "r1", "author": a, "content": c,
             "occurred_at": 0, "flags": [], "tool_call": None}
            for s, (a, c) in MESSAGES.items() if s <= seq
        ],
        "lineage": {"closed": [], "branch_start": 1},
    }  # fmt: skip
    doc.update(over)
    return doc


async def insert_role(conn: Conn, tenant: str, role: str, **cols: Any) -> None:
    row: dict[str, Any] = {
        "tenant_id": tenant, "role_id": role, "lifecycle": "active", "name": "Billing helper",
        "persona": "You are a careful billing assistant.", "traits": json.dumps({"tone": "warm"}),
        "model": "m-1", "seq": 11, "head_commit_id": cid("c4"),
        "counters": json.dumps({"rollbacks": 1}), "live": live((1, 7), (10, 11)),
        "created_at": T0, "updated_at": T0 + timedelta(minutes=11),
    }  # fmt: skip
    row.update(cols)
    names = ", ".join(row)
    marks = ", ".join(["%s"] * len(row))
    await conn.execute(f"INSERT INTO roles ({names}) VALUES ({marks})", list(row.values()))  # type: ignore[arg-type]


async def insert_message(
    conn: Conn, tenant: str, role: str, seq: int, author: str, content: str, superseded: bool
) -> None:
    [vector] = await PROVIDER.embed([content])
    await conn.execute(
        "INSERT INTO messages (tenant_id, role_id, seq, message_id, event_id, author, content,"
        " occurred_at, superseded, embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (tenant, role, seq, f"m{seq}", uuid.uuid4(), author, content,
         T0 + timedelta(minutes=seq), superseded, vector),
    )  # fmt: skip


async def insert_commit(
    conn: Conn, name: str, role: str, parent: str | None, seq: int, kind: str, snap: Any,
    tenant: str = "acme", **cols: Any,
) -> None:  # fmt: skip
    await conn.execute(
        "INSERT INTO commits (commit_id, tenant_id, role_id, parent_id, seq, kind, label, reason,"
        " rollback_to, state_digest, occurred_at, event_id, snapshot, live)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (cid(name), tenant, role, parent and cid(parent), seq, kind, cols.get("label"),
         cols.get("reason"), cols.get("rollback_to"), "d" * 64, T0 + timedelta(minutes=seq),
         uuid.uuid4(), json.dumps(snap), cols.get("live")),
    )  # fmt: skip


async def insert_rejection(conn: Conn, offset: int, tenant: str | None, role: str | None,
                           reason: str) -> None:  # fmt: skip
    await conn.execute(
        "INSERT INTO rejections (wal_topic, wal_partition, wal_offset, reason, message, original,"
        " tenant_id, role_id, event_type, projected_at) VALUES ('p.wal', 0, %s, %s, %s, %s, %s,"
        " %s, %s, %s)",
        (offset, reason, f"refused [red]{reason}[/red]", b"\x00raw", tenant, role,
         "MessageAppended", T0 + timedelta(seconds=offset)),
    )  # fmt: skip


async def seed(conn: Conn) -> None:
    await insert_role(conn, "acme", "r1")
    for seq, (author, content) in MESSAGES.items():
        await insert_message(conn, "acme", "r1", seq, author, content, superseded=seq in (8, 9))
    restored = {"lineage": {"closed": [[1, 7]], "branch_start": 10},
                "messages": snapshot("r1", 7, "active")["messages"]}  # fmt: skip
    for args, cols in [
        (("c1", "r1", None, 1, "created", snapshot("r1", 1, "created")), {}),
        (("c2", "r1", "c1", 2, "lifecycle", snapshot("r1", 2, "active")), {}),
        (("c3", "r1", "c2", 7, "manual", snapshot("r1", 7, "active")),
         {"label": "v1", "live": live((1, 7))}),
        (("c4", "r1", "c3", 10, "rollback", snapshot("r1", 10, "active", **restored)),
         {"reason": "hallucinated", "rollback_to": cid("c3")}),
    ]:  # fmt: skip
        await insert_commit(conn, *args, **cols)  # type: ignore[arg-type]
    await insert_role(
        conn, "acme", "f1", name="Fork", seq=3, head_commit_id=cid("c5"), live=live((1, 3)),
        forked_from_role="r1", forked_from_commit=cid("c3"), forked_live=live((1, 7)),
        counters=json.dumps({}),
    )  # fmt: skip
    await insert_message(conn, "acme", "f1", 3, "user", "the fork speaks", superseded=False)
    await insert_commit(conn, "c5", "f1", "c3", 1, "fork", snapshot("r1", 7, "created"))
    await insert_role(
        conn, "other", "r1", persona="Other tenant persona", lifecycle="suspended", seq=4,
        head_commit_id=cid("o1"), live=live((1, 4)),
    )  # fmt: skip
    await insert_message(conn, "other", "r1", 3, "user", "other tenant secret", superseded=False)
    await insert_commit(conn, "o1", "r1", None, 1, "created", snapshot("r1", 1, "created"),
                        tenant="other")  # fmt: skip
    await insert_rejection(conn, 100, "acme", "r1", "not_active")
    await insert_rejection(conn, 101, "acme", "r2", "unknown_role")
    await insert_rejection(conn, 102, "other", "r1", "not_active")
    await insert_rejection(conn, 103, None, None, "undecodable")
    await conn.commit()


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    settings = replace(settings, pg_schema=schema)
    async with connect(settings, resolve(settings)) as conn:
        await migrate(conn, schema, embedding_dim=PROVIDER.dim, embedding_model=PROVIDER.name)
        await conn.commit()
        await seed(conn)
        yield Store(settings, schema, conn)


# --- queries -------------------------------------------------------------------


async def test_role_show_and_list_stay_in_their_tenant(store: Store) -> None:
    r1 = await queries.role_show(store.conn, "acme", "r1")
    assert (r1.lifecycle, r1.seq, r1.live, r1.traits) == ("active", 11, ((1, 7), (10, 11)), {
        "tone": "warm"})  # fmt: skip
    other = await queries.role_show(store.conn, "other", "r1")
    assert other.persona == "Other tenant persona"
    assert [v.role_id for v in await queries.role_list(store.conn, "acme")] == ["f1", "r1"]
    assert [v.role_id for v in await queries.role_list(store.conn, "other", "active")] == []
    assert [v.tenant_id for v in await queries.role_list(store.conn, "other", "suspended")] == [
        "other"]  # fmt: skip
    fork = await queries.role_show(store.conn, "acme", "f1")
    assert (fork.forked_from_role, fork.forked_from_commit) == ("r1", cid("c3"))


async def test_unknown_role_and_commit_are_clear_errors(store: Store) -> None:
    with pytest.raises(UnknownRoleError, match=r"role 'nope'.*tenant 'acme'.*role list"):
        await queries.role_show(store.conn, "acme", "nope")
    with pytest.raises(UnknownRoleError):
        await queries.log(store.conn, "nobody", "r1")
    with pytest.raises(UnknownCommitError, match=r"commit 'abc'.*rolebus log"):
        await queries.show_commit(store.conn, "acme", "abc")
    with pytest.raises(UnknownCommitError):  # another tenant's commit is unknown here
        await queries.show_commit(store.conn, "acme", cid("o1"))


async def test_log_is_newest_first_with_the_rollback(store: Store) -> None:
    entries = await queries.log(store.conn, "acme", "r1")
    assert [e.commit_id for e in entries] == [cid(n) for n in ("c4", "c3", "c2", "c1")]
    top = entries[0]
    assert (top.kind, top.reason, top.rollback_to, top.parent_id) == (
        "rollback", "hallucinated", cid("c3"), cid("c3"))  # fmt: skip
    assert entries[1].label == "v1"
    assert [e.commit_id for e in await queries.log(store.conn, "other", "r1")] == [cid("o1")]


async def test_show_and_diff_commits(store: Store) -> None:
    shown = await queries.show_commit(store.conn, "acme", cid("c3")[:8])  # a unique prefix
    assert shown.entry.label == "v1" and shown.snapshot["seq"] == 7
    d = await queries.diff(store.conn, "acme", cid("c2"), cid("c4"))
    fields = {c.field: (c.before, c.after) for c in d.changes}
    assert fields["seq"] == (2, 10)
    assert [m.seq for m in d.only_in_b] == [3, 4, 5, 6]
    assert d.live_only_in_b == ((3, 7), (10, 10))  # 8-9 were superseded by c4
    assert (await queries.diff(store.conn, "acme", cid("c3"), cid("c3"))).empty


async def test_rejections_filter_by_tenant_role_and_reason(store: Store) -> None:
    rows = await queries.rejections(store.conn, "acme")
    assert [r.wal_offset for r in rows] == [101, 100]  # newest first; no NULL-tenant row
    assert [r.wal_offset for r in await queries.rejections(store.conn, "acme", "r1")] == [100]
    by_reason = await queries.rejections(store.conn, "acme", reason="unknown_role")
    assert [(r.role_id, r.original) for r in by_reason] == [("r2", b"\x00raw")]
    assert [r.wal_offset for r in await queries.rejections(store.conn, "other")] == [102]


# --- CLI -----------------------------------------------------------------------


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_cli_json_outputs(store: Store, run_cli: RunCli) -> None:
    env = {**store.env, "ROLEBUS_TENANT": "acme"}
    shown = json.loads(ok(run_cli("role", "show", "r1", "--json", env=env)))
    assert shown["live"] == [[1, 7], [10, 11]] and shown["tenant_id"] == "acme"
    other = json.loads(ok(run_cli("role", "show", "r1", "--tenant", "other", "--json", env=env)))
    assert other["persona"] == "Other tenant persona"
    listed = json.loads(ok(run_cli("role", "list", "--state", "active", "--json", env=env)))
    assert [r["role_id"] for r in listed] == ["f1", "r1"]
    log = json.loads(ok(run_cli("log", "r1", "--json", env=env)))
    assert [e["kind"] for e in log] == ["rollback", "manual", "lifecycle", "created"]
    assert log[0]["rollback_to"] == cid("c3")
    commit = json.loads(ok(run_cli("show", cid("c3"), "--json", env=env)))
    assert commit["snapshot"]["seq"] == 7 and commit["entry"]["label"] == "v1"
    diff = json.loads(ok(run_cli("diff", cid("c3"), cid("c4"), "--json", env=env)))
    assert diff["live_only_in_b"] == [[10, 10]]
    rej = json.loads(ok(run_cli("rejections", "--reason", "not_active", "--json", env=env)))
    assert [(r["role_id"], r["wal_offset"]) for r in rej] == [("r1", 100)]


async def test_cli_tables_print_user_text_verbatim(store: Store, run_cli: RunCli) -> None:
    env = {**store.env, "ROLEBUS_TENANT": "acme", "COLUMNS": "250"}
    out = ok(run_cli("show", cid("c3")[:10], env=env))
    assert "I am sorry [bold]about[/bold] that" in out
    out = ok(run_cli("log", "r1", env=env))
    assert f"rolled back to {cid('c3')[:12]}: hallucinated" in out
    assert "refused [red]not_active[/red]" in ok(run_cli("rejections", env=env))
    for args in (["role", "show", "f1"], ["role", "list"], ["diff", cid("c2"), cid("c4")]):
        ok(run_cli(*args, env=env))


async def test_cli_unknown_role_or_commit_exit_non_zero(store: Store, run_cli: RunCli) -> None:
    env = {**store.env, "ROLEBUS_TENANT": "acme"}
    for args, needle in [
        (["role", "show", "ghost"], "role 'ghost': not found in tenant 'acme'"),
        (["log", "ghost"], "role 'ghost'"),
        (["show", "deadbeef00"], "commit 'deadbeef00': not found"),
        (["diff", cid("c1"), "f00ba4"], "commit 'f00ba4'"),
        (["show", cid("o1")], "not found in tenant 'acme'"),
    ]:
        result = run_cli(*args, env=env)
        assert result.returncode != 0, args
        assert needle in result.stderr and "Traceback" not in result.stderr
        assert result.stdout == ""
    empty = run_cli("log", "r1", env={**env, "ROLEBUS_PG_SCHEMA": f"t_{uuid.uuid4().hex[:10]}"})
    assert empty.returncode != 0 and "has no tables yet" in empty.stderr, empty.stderr


# --- recall and context ------------------------------------------------------------


def contents(messages: list[dict[str, str]] | list[Any]) -> list[str]:
    return [m["content"] for m in messages[1:]]


async def test_context_excludes_superseded_and_keeps_order(store: Store) -> None:
    ctx = await queries.context(store.conn, None, "acme", "r1")
    assert ctx.messages[0] == {
        "role": "system", "content": "You are a careful billing assistant.\n\nTraits:\n- tone: warm"
    }  # fmt: skip
    assert contents(ctx.messages) == [MESSAGES[s][1] for s in (3, 4, 5, 6, 11)]
    assert [m["role"] for m in ctx.messages[1:]] == ["user", "assistant", "user", "assistant",
                                                    "user"]  # fmt: skip


async def test_fork_context_holds_its_source_history_up_to_the_fork(store: Store) -> None:
    ctx = await queries.context(store.conn, None, "acme", "f1")
    assert contents(ctx.messages) == [*(MESSAGES[s][1] for s in (3, 4, 5, 6)), "the fork speaks"]


async def test_context_and_recall_stay_in_their_tenant(store: Store) -> None:
    ctx = await queries.context(store.conn, PROVIDER, "other", "r1", query="invoice")
    assert ctx.messages[0]["content"].startswith("Other tenant persona")
    assert contents(ctx.messages) == ["other tenant secret"]
    hits = await queries.recall(store.conn, PROVIDER, "other", "r1", "invoice", 10)
    assert [h.content for h in hits] == ["other tenant secret"]
    with pytest.raises(UnknownRoleError):
        await queries.context(store.conn, None, "other", "f1")


async def test_recall_ranks_visible_messages_only(store: Store) -> None:
    hits = await queries.recall(
        store.conn, PROVIDER, "acme", "r1", "billing problem with an invoice"
    )
    assert hits[0].seq == 3
    everything = await queries.recall(store.conn, PROVIDER, "acme", "r1", "april", 20)
    assert sorted(h.seq for h in everything) == [3, 4, 5, 6, 11]  # never 8, 9
    forked = await queries.recall(store.conn, PROVIDER, "acme", "f1", "april", 20)
    assert sorted((h.role_id, h.seq) for h in forked) == [("f1", 3), *(("r1", s) for s in (
        3, 4, 5, 6))]  # fmt: skip


async def test_token_budget_holds_and_recall_fills_the_rest(store: Store) -> None:
    from rolebus.projectors.context import MESSAGE_OVERHEAD, REPLY_PRIMING
    from rolebus.projectors.tokens import count_tokens

    full = await queries.context(store.conn, None, "acme", "r1")
    for budget in range(full.tokens - 1, 20, -7):
        ctx = await queries.context(store.conn, PROVIDER, "acme", "r1", "invoice", budget)
        real = REPLY_PRIMING + sum(count_tokens(m["content"]) + MESSAGE_OVERHEAD
                                   for m in ctx.messages)  # fmt: skip
        assert real == ctx.tokens <= budget
    system = full.messages[0]["content"]
    tight = REPLY_PRIMING + count_tokens(system) + MESSAGE_OVERHEAD
    tight += sum(count_tokens(MESSAGES[s][1]) + MESSAGE_OVERHEAD for s in (3, 11))
    ctx = await queries.context(store.conn, PROVIDER, "acme", "r1", "my invoice for march", tight)
    assert contents(ctx.messages) == [MESSAGES[3][1], MESSAGES[11][1]]  # recalled, then recent
    assert (ctx.recent, ctx.recalled, ctx.tokens) == (1, 1, tight)


async def test_cli_recall_and_context(store: Store, run_cli: RunCli) -> None:
    env = {**store.env, "ROLEBUS_TENANT": "acme", "COLUMNS": "250"}
    msgs = json.loads(ok(run_cli("context", "r1", "--json", env=env)))
    assert contents(msgs) == [MESSAGES[s][1] for s in (3, 4, 5, 6, 11)]
    assert set(msgs[0]) == {"role", "content"}
    small = run_cli("context", "r1", "--max-tokens", "40", "--query", "invoice", "--json", env=env)
    assert len(json.loads(ok(small))) >= 1 and "tokens" in small.stderr
    hits = json.loads(
        ok(run_cli("recall", "r1", "invoice for march", "-k", "2", "--json", env=env))
    )
    assert hits[0]["seq"] == 3 and len(hits) == 2
    then = run_cli("recall", "r1", "invoice", "--as-of", cid("c3"), "-k", "20", "--json", env=env)
    assert {h["seq"] for h in json.loads(ok(then))} <= set(range(1, 8))  # live at c3: 1..7
    assert "[bold]about[/bold]" in ok(run_cli("context", "r1", env=env))
    for args, needle in [
        (["context", "ghost"], "role 'ghost': not found"),
        (["recall", "ghost", "x"], "role 'ghost': not found"),
        (["context", "r1", "--max-tokens", "5"], "raise --max-tokens to at least"),
    ]:
        result = run_cli(*args, env=env)
        assert result.returncode != 0 and needle in result.stderr, (args, result.stderr)
