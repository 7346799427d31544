-- A role's visible (live) history: THE definition every read (recall, context,
-- diff) uses, so a rollback or a fork is followed the same way everywhere.
--
-- visible(tenant T, role R) =
--     R's own messages that are NOT superseded
--   + for each ancestor A on R's fork chain (R forked from S, S from Q, ...):
--     A's messages whose seq lies in the forked_live of A's child on the chain
--     (the seqs live at the fork commit; their superseded flag does not matter:
--     a later rollback in the source changes nothing for the fork).
--
-- Inherited rows are read from the source, never copied, so re-projecting the
-- source rebuilds the fork's history too. Nothing crosses tenants: the chain
-- and the rows are both filtered on the tenant.

-- The fork chain of a role: depth 0 is the role itself (live NULL: its rows
-- that are NOT superseded), depth d > 0 the source d forks up with the seqs
-- of it that are visible. extent bounds how many rows a level can add (the
-- role's seq, or the width of the inherited ranges): recall picks exact or
-- HNSW search from it. A role without a roles row yet still sees its own
-- messages (extent 0). The depth bound only guards against a corrupt store.
CREATE OR REPLACE FUNCTION role_lineage(p_tenant text, p_role text)
RETURNS TABLE (role_id text, depth integer, live int8multirange, extent bigint)
LANGUAGE sql STABLE PARALLEL SAFE
-- The SET clause pins the function to its own store schema and keeps it from
-- being inlined: the planner then sees a cheap function call instead of
-- planning this recursive query again in every query that reads it.
SET search_path FROM CURRENT
AS $$
    WITH RECURSIVE chain (role_id, depth, live, extent, next_role, next_live) AS (
        SELECT p_role, 0, NULL::int8multirange, coalesce(r.seq, 0),
               r.forked_from_role, r.forked_live
        FROM (SELECT 1) AS one
        LEFT JOIN roles r ON r.tenant_id = p_tenant AND r.role_id = p_role
        UNION ALL
        SELECT s.role_id, c.depth + 1, coalesce(c.next_live, '{}'::int8multirange),
               (SELECT coalesce(sum(upper(x) - lower(x)), 0)::bigint
                FROM unnest(coalesce(c.next_live, '{}'::int8multirange)) x),
               s.forked_from_role, s.forked_live
        FROM chain c
        JOIN roles s ON s.tenant_id = p_tenant AND s.role_id = c.next_role
        WHERE c.depth < 100
    )
    SELECT role_id, depth, live, extent FROM chain
$$;

-- At most how many messages visible_messages(p_tenant, p_role) can return.
CREATE OR REPLACE FUNCTION visible_extent(p_tenant text, p_role text)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $$
    SELECT sum(extent)::bigint FROM role_lineage(p_tenant, p_role)
$$;

-- The visible messages of a role, as rows of messages plus nothing else, so a
-- query can order and limit them like the table itself. p_own_live NULL: the
-- role's rows that are NOT superseded (now); a multirange: its rows whose seq
-- was live at a commit (`recall --as-of`), whatever their flag says now.
-- The lineage is read once per statement (uncorrelated sub-selects become init plans) and the
-- outer filter is a plain predicate on messages: the planner can still use the
-- HNSW index (ORDER BY embedding <=> q LIMIT k) or messages_recent (seq DESC).
-- Inlinable: LANGUAGE sql, STABLE, not STRICT, no SET clause.
CREATE OR REPLACE FUNCTION visible_messages(
    p_tenant text, p_role text, p_own_live int8multirange DEFAULT NULL)
RETURNS SETOF messages
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT m.*
    FROM messages m
    WHERE m.tenant_id = p_tenant
      AND m.role_id = ANY (ARRAY(SELECT l.role_id FROM role_lineage(p_tenant, p_role) l))
      AND CASE
            WHEN m.role_id = p_role THEN
                CASE WHEN p_own_live IS NULL THEN NOT m.superseded ELSE m.seq <@ p_own_live END
            ELSE m.seq <@ (ARRAY(SELECT l.live FROM role_lineage(p_tenant, p_role) l
                                 ORDER BY l.depth))[
                     array_position(
                         ARRAY(SELECT l.role_id FROM role_lineage(p_tenant, p_role) l
                               ORDER BY l.depth),
                         m.role_id)]
          END
$$;
