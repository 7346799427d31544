"""The read side on what the real pipeline writes: RoleClient -> ``rolebus
worker`` -> ``rolebus project`` -> queries and CLI. A scripted conversation
is tagged, hallucinates, is rolled back and forked; then ``log`` shows the
rollback, ``context`` and ``recall`` leave the superseded turns out, the fork's
context holds its source's history up to the fork commit, and another tenant's
role and refusals stay apart (role ids are global in the log: another tenant
writing to ``nova`` is refused as ``cross_tenant``, and that refusal is the
other tenant's).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, resolve
from rolebus.projectors import db, queries
from rolebus.projectors.embeddings import WordLlamaProvider
from rolebus.projectors.views import UnknownRoleError
from rolebus.wal import topics
from rolebus.wal.client import RoleClient
from testkit.harness import ProjectorProcess, WorkerProcess, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

TALK = ["my invoice for march is wrong", "Sorry, let me check.", "it says 40 euros",
        "The right amount is 30 euros."]  # fmt: skip
HALLUCINATED = ["and april?", "April is free forever for everyone."]


@dataclass
class Pipeline:
    settings: Settings
    ends: Endpoints
    schema: str

    @property
    def env(self) -> dict[str, str]:
        return {"ROLEBUS_PG_DSN": self.ends.pg_dsn, "ROLEBUS_PG_SCHEMA": self.schema}


@pytest.fixture
async def pipeline(settings: Settings, tmp_path: Path) -> AsyncIterator[Pipeline]:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    settings = replace(settings, pg_schema=schema)
    ends = resolve(settings)
    await topics.ensure(settings, ends)
    worker = WorkerProcess(settings, ends, f"w-{uuid.uuid4().hex[:6]}", tmp_path / "worker.log")
    worker.start()
    env = {**worker_env(settings, ends, worker.app_id), "ROLEBUS_PG_SCHEMA": schema}
    projector = ProjectorProcess(env, tmp_path / "projector.log").start()
    try:
        yield Pipeline(settings, ends, schema)
    finally:
        projector.stop()
        worker.stop()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except Exception:  # not projected yet (tables or role missing)
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"not within {timeout}s: {what}")


async def test_rollback_fork_and_tenants_as_projected(
    pipeline: Pipeline, run_cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    p = pipeline
    provider = WordLlamaProvider.load()
    async with (
        RoleClient(p.settings, "acme", endpoints=p.ends) as acme,
        RoleClient(p.settings, "zeta", endpoints=p.ends) as zeta,
        db.connect(p.settings, p.ends, autocommit=True) as conn,
    ):
        for client, role in ((acme, "nova"), (zeta, "zeta-nova")):
            await client.create_role("Nova", "Billing helper.", traits={"tone": "warm"},
                                     role_id=role)  # fmt: skip
            await client.activate(role)
        for i, text in enumerate(TALK):
            await acme.append_message("nova", "user" if i % 2 == 0 else "assistant", text)
        await zeta.append_message("zeta-nova", "user", "zeta secret about invoices")
        await zeta.append_message("nova", "user", "not yours")  # refused: cross_tenant
        await acme.request_commit("nova", "good")

        async def tagged() -> bool:
            return any(e.label == "good" for e in await queries.log(conn, "acme", "nova"))

        await until(tagged, "the manual commit is projected")
        good = next(e for e in await queries.log(conn, "acme", "nova") if e.label == "good")
        for text in HALLUCINATED:
            await acme.append_message("nova", "user", text)
        await acme.rollback("nova", good.commit_id, reason="hallucinated")
        await acme.append_message("nova", "user", "after the rollback")
        fork = (await acme.fork("nova", good.commit_id, "Nova-2")).role_id
        await acme.activate(fork)
        await acme.append_message(fork, "user", "the fork speaks")

        async def settled() -> bool:
            nova = await queries.context(conn, None, "acme", "nova")
            forked = await queries.context(conn, None, "acme", fork)
            other = await queries.context(conn, None, "zeta", "zeta-nova")
            return nova.messages[-1]["content"] == "after the rollback" and (
                forked.messages[-1]["content"] == "the fork speaks"
                and other.messages[-1]["content"] == "zeta secret about invoices"
            )

        await until(settled, "the rollback and the fork are projected")

        nova = await queries.context(conn, provider, "acme", "nova", query="april free")
        assert [m["content"] for m in nova.messages[1:]] == [*TALK, "after the rollback"]
        forked = await queries.context(conn, None, "acme", fork)
        assert [m["content"] for m in forked.messages[1:]] == [*TALK, "the fork speaks"]
        hits = await queries.recall(conn, provider, "acme", "nova", "april is free", 20)
        assert {h.content for h in hits} == {*TALK, "after the rollback"}
        zeta_hits = await queries.recall(conn, provider, "zeta", "zeta-nova", "invoice", 20)
        assert [h.content for h in zeta_hits] == ["zeta secret about invoices"]
        for tenant, role in (("zeta", "nova"), ("zeta", fork), ("acme", "zeta-nova")):
            with pytest.raises(UnknownRoleError):
                await queries.recall(conn, provider, tenant, role, "invoice")
        refused = await queries.rejections(conn, "zeta", reason="cross_tenant")
        assert [(r.role_id, r.event_type) for r in refused] == [("nova", "MessageAppended")]
        assert await queries.rejections(conn, "acme") == []

        top = (await queries.log(conn, "acme", "nova"))[0]
        assert (top.kind, top.rollback_to, top.reason) == (
            "rollback", good.commit_id, "hallucinated")  # fmt: skip
        d = await queries.diff(conn, "acme", good.commit_id, top.commit_id)
        assert not d.only_in_a and not d.only_in_b  # the window came back as it was

    env = {**p.env, "ROLEBUS_TENANT": "acme"}
    log = run_cli("log", "nova", "--json", env=env)
    assert log.returncode == 0, log.stderr
    assert json.loads(log.stdout)[0]["rollback_to"] == good.commit_id
    ctx = run_cli("context", "nova", "--json", env=env)
    assert [m["content"] for m in json.loads(ctx.stdout)[1:]] == [*TALK, "after the rollback"]
    gone = run_cli("context", "nova", "--tenant", "nobody", env=env)
    assert gone.returncode != 0 and "role 'nova': not found in tenant 'nobody'" in gone.stderr
