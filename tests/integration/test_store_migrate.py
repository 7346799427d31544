"""The context store's migrations on the real PostgreSQL: idempotent, inside one
schema, and a dimension mismatch is refused with both numbers."""

from __future__ import annotations

import uuid

import pytest

from rolebus.config import Settings
from rolebus.endpoints import resolve
from rolebus.errors import ConfigError
from rolebus.projectors.db import connect, migrate, migrations

pytestmark = [pytest.mark.postgres]


async def test_migrate_is_idempotent_and_checks_the_dimension(settings: Settings) -> None:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    ends = resolve(settings)
    async with connect(settings, ends, schema) as conn:
        first = await migrate(conn, schema, embedding_dim=8, embedding_model="test-8")
        again = await migrate(conn, schema, embedding_dim=8, embedding_model="test-8")
        assert [m.version for m in first] == [m.version for m in migrations()]
        assert again == []
        cur = await conn.execute(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'messages'::regclass"
            " AND attname = 'embedding'"
        )
        assert (await cur.fetchone()) == (8,)
        with pytest.raises(ConfigError, match=r"vector\(8\).*makes 16-dim"):
            await migrate(conn, schema, embedding_dim=16, embedding_model="test-16")
