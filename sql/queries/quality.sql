-- quality_workers_alive --
-- Live `mailpipe check worker` processes: each one's listening session holds (7240001, pid)
SELECT count(*) AS workers
  FROM pg_locks
 WHERE locktype = 'advisory' AND classid = 7240001 AND objsubid = 2 AND granted
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database());

-- hold_quality_worker_lock --
-- Taken by a worker's listening session for its whole life: its liveness, seen by flow runs
SELECT pg_advisory_lock(7240001, pg_backend_pid()), pg_backend_pid() AS pid;

-- request_quality_check --
-- A flow run asks for its post-run check; the NOTIFY wakes a waiting worker at commit
WITH request AS (
    INSERT INTO quality_checks (flow_name, flow_run_id, since)
    VALUES (%(flow_name)s, %(flow_run_id)s, %(since)s)
    RETURNING id)
SELECT id, pg_notify('mailpipe_quality_checks', id::text) FROM request;

-- claim_quality_check --
-- A worker takes the oldest waiting request; SKIP LOCKED keeps concurrent workers apart
UPDATE quality_checks AS q
   SET status = 'running', started_at = now(), checked_by = %(checked_by)s,
       worker_pid = %(worker_pid)s
 WHERE q.id = (SELECT id FROM quality_checks
                WHERE status = 'queued'
                ORDER BY id
                FOR UPDATE SKIP LOCKED
                LIMIT 1)
RETURNING q.id, q.flow_name, q.since;

-- take_over_quality_check --
-- The flow run checks itself: nobody claimed its request, or the claiming worker is gone
UPDATE quality_checks AS q
   SET status = 'running', started_at = now(), checked_by = %(checked_by)s, worker_pid = NULL
 WHERE q.id = %(id)s
   AND (q.status = 'queued'
        OR (q.status = 'running' AND NOT quality_worker_is_alive(q.worker_pid)))
RETURNING q.id;

-- start_inline_quality_check --
-- No worker is running: the flow run records the check it does itself
INSERT INTO quality_checks (flow_name, flow_run_id, since, status, started_at, checked_by)
VALUES (%(flow_name)s, %(flow_run_id)s, %(since)s, 'running', now(), %(checked_by)s)
RETURNING id;

-- finish_quality_check --
-- The answer, then a NOTIFY (delivered at commit) for the flow run waiting on it
WITH done AS (
    UPDATE quality_checks
       SET status = %(status)s, finished_at = now(), elapsed_seconds = %(elapsed_seconds)s,
           failed_suites = %(failed_suites)s, warning_suites = %(warning_suites)s,
           report = %(report)s, error = %(error)s
     WHERE id = %(id)s AND status = 'running'
       AND checked_by IS NOT DISTINCT FROM %(checked_by)s
    RETURNING id)
SELECT id, pg_notify('mailpipe_quality_checks_done', id::text) FROM done;

-- quality_check_state --
-- What a waiting flow run polls: its request's status, answer and whether its worker lives
SELECT q.status, q.report, q.error, q.checked_by,
       quality_worker_is_alive(q.worker_pid) AS worker_alive
  FROM quality_checks AS q
 WHERE q.id = %(id)s;

-- recent_quality_checks --
-- `mailpipe check history`: newest first
SELECT id, flow_name, status, requested_at, started_at, finished_at, checked_by,
       elapsed_seconds, failed_suites, warning_suites, error,
       report ->> 'docs_url' AS docs_url
  FROM quality_checks
 WHERE (%(flow_name)s::text IS NULL OR flow_name = %(flow_name)s)
 ORDER BY id DESC
 LIMIT %(limit)s;

-- prune_quality_checks --
-- Retention (MAILPIPE_QUALITY_KEEP_DAYS): finished checks older than the cutoff, by index range
DELETE FROM quality_checks
 WHERE requested_at < now() - make_interval(days => %(keep_days)s)
   AND status IN ('passed', 'failed', 'error');
