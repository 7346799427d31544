-- A role's visible (live) history: THE definition every read (recall, context,
-- diff) uses, so a rollback or a fork is followed the same way everywhere.
--
-- visible(tenant T, role R) =
--     R's own messages that are NOT superseded
--   + for each ancestor A on R's fork chain (R forked from S, S from Q, ...):
--     A's messages whose seq lies in the forked_live of A's child on the chain
--     (the seqs live at the fork commit; their superseded flag does not matter:
--     a later rollback in the source changes nothing for the fork).
-- As of a commit of R (`recall --as-of`), R's own part is instead its messages
-- whose seq was live at that commit (p_own_live), whatever their flag says now.
--
-- role_lineage states it as rows (role, depth, live) with the one rule
--     live IS NULL: the role's rows NOT superseded; else: its rows with seq <@ live
-- and visible_messages (any order: recall) and recent_visible_messages (newest
-- first: context) both read it. Inherited rows are read from the source, never
-- copied, so re-projecting the source rebuilds the fork's history too. Nothing
-- crosses tenants: the chain and the rows are both filtered on the tenant.

-- The fork chain of a role: depth 0 is the role itself, depth d > 0 the source
-- d forks up. extent bounds how many rows a level can add (the role's seq, or
-- the width of the inherited ranges): recall picks exact or HNSW search from
-- it. A role without a roles row yet still sees its own messages (extent 0).
-- The depth bound only guards against a corrupt store.
CREATE OR REPLACE FUNCTION role_lineage(
    p_tenant text, p_role text, p_own_live int8multirange DEFAULT NULL)
RETURNS TABLE (role_id text, depth integer, live int8multirange, extent bigint)
-- plpgsql, not sql: never inlined, so the planner sees a cheap function call
-- (its plan is cached per session) instead of planning this recursive query
-- again in every query that reads it. No SET search_path: like every store
-- query it reads the schema the connection is set to, so a schema renamed by
-- a replay's swap keeps working.
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN QUERY
    WITH RECURSIVE chain (role_id, depth, live, extent, next_role, next_live) AS (
        SELECT p_role, 0, p_own_live, coalesce(r.seq, 0), r.forked_from_role, r.forked_live
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
    SELECT chain.role_id, chain.depth, chain.live, chain.extent FROM chain;
END
$$;

-- At most how many messages visible_messages(p_tenant, p_role) can return.
CREATE OR REPLACE FUNCTION visible_extent(p_tenant text, p_role text)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT sum(extent)::bigint FROM role_lineage(p_tenant, p_role)
$$;

-- The visible messages of a role, as rows of messages and nothing else, so a
-- query can filter, order and limit them like the table itself. The lineage
-- is read once per statement (uncorrelated sub-selects become init plans) and
-- the filter is a plain predicate on messages, so the planner can still walk
-- the HNSW index for ORDER BY embedding <=> q LIMIT k.
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
            WHEN m.role_id = p_role AND p_own_live IS NULL THEN NOT m.superseded
            ELSE m.seq <@ (ARRAY(SELECT l.live FROM role_lineage(p_tenant, p_role, p_own_live) l
                                 ORDER BY l.depth))[
                     array_position(
                         ARRAY(SELECT l.role_id FROM role_lineage(p_tenant, p_role) l
                               ORDER BY l.depth),
                         m.role_id)]
          END
$$;

-- The p_limit most recent visible messages, newest first: the role's own by
-- seq, then (when they run short) its source's up to the fork, and so on up
-- the chain. One index scan per level, each stopped at what is still wanted,
-- so its cost does not grow with the history (visible_messages ORDER BY ...
-- LIMIT would read every visible row to sort them).
CREATE OR REPLACE FUNCTION recent_visible_messages(
    p_tenant text, p_role text, p_limit integer, p_own_live int8multirange DEFAULT NULL)
RETURNS SETOF messages
LANGUAGE plpgsql STABLE AS $$
DECLARE
    level record;
    wanted integer := p_limit;
    got integer;
BEGIN
    FOR level IN SELECT * FROM role_lineage(p_tenant, p_role, p_own_live) ORDER BY depth LOOP
        EXIT WHEN wanted <= 0;
        IF level.live IS NULL THEN
            RETURN QUERY SELECT m.* FROM messages m
                WHERE m.tenant_id = p_tenant AND m.role_id = level.role_id AND NOT m.superseded
                ORDER BY m.seq DESC LIMIT wanted;
        ELSE
            RETURN QUERY SELECT m.* FROM messages m
                WHERE m.tenant_id = p_tenant AND m.role_id = level.role_id
                  AND m.seq <@ level.live
                ORDER BY m.seq DESC LIMIT wanted;
        END IF;
        GET DIAGNOSTICS got = ROW_COUNT;
        wanted := wanted - got;
    END LOOP;
END
$$;
