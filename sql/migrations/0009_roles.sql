-- pgqueue migration 0009: the role split (sql/roles.sql, `pgqueue roles`).
--
-- pgqueue.enqueue_workflow runs with its owner's rights (security definer), so that a
-- producer role enqueues workflows without any privilege on pgqueue.workflows or
-- pgqueue.job_dependencies: direct writes there could attach edges to other jobs or
-- rewrite other workflows. The function writes only the rows of the workflow it
-- creates (a step's dependencies are indexes of earlier steps of the same call),
-- builds no SQL from its arguments, names every table with its schema, and pins its
-- search_path with pg_temp last, so a caller's temporary objects cannot stand in for
-- pgqueue's. Only roles granted EXECUTE may call it.

alter function pgqueue.enqueue_workflow(jsonb, text, integer[], boolean)
    security definer set search_path = pg_catalog, pgqueue, pg_temp;
revoke execute on function pgqueue.enqueue_workflow(jsonb, text, integer[], boolean) from public;
