-- Why: the data-quality check that ends each flow run is answered by a long-lived
-- `mailpipe check worker` when one is running: Great Expectations is imported once per worker
-- instead of once per flow run (seconds of CPU, every minute for process_email_queue). A flow
-- run files its request here and waits for the answer; the table is also the history of every
-- post-run check (inline ones too), queryable by operators and the data team.
--
-- Protocol (mailpipe/quality_worker.py): the flow inserts a 'queued' row and NOTIFYs
-- mailpipe_quality_checks; a worker claims it (FOR UPDATE SKIP LOCKED, status 'running',
-- worker_pid = the backend pid of its listening session, which holds the advisory lock
-- (7240001, pid) while the worker lives), stores the report and NOTIFYs
-- mailpipe_quality_checks_done. A request no worker claims in time, or whose worker's lock
-- is gone, is taken over by the flow itself: no check is lost with a worker.

CREATE TABLE IF NOT EXISTS quality_checks (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flow_name         text NOT NULL,
    flow_run_id       uuid,
    since             timestamptz,
    status            text NOT NULL DEFAULT 'queued',
    requested_at      timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    checked_by        text,
    worker_pid        integer,
    elapsed_seconds   double precision,
    failed_suites     text[] NOT NULL DEFAULT '{}',
    warning_suites    text[] NOT NULL DEFAULT '{}',
    report            jsonb,
    error             text,
    CONSTRAINT quality_checks_status_check
        CHECK (status IN ('queued', 'running', 'passed', 'failed', 'error')),
    CONSTRAINT quality_checks_finished_check
        CHECK ((status IN ('passed', 'failed', 'error')) = (finished_at IS NOT NULL)),
    CONSTRAINT quality_checks_report_check
        CHECK (status NOT IN ('passed', 'failed') OR report IS NOT NULL),
    CONSTRAINT quality_checks_elapsed_check
        CHECK (elapsed_seconds IS NULL OR elapsed_seconds >= 0)
);

-- Workers claim the oldest waiting request; the partial index stays tiny (requests are
-- answered within seconds).
CREATE INDEX IF NOT EXISTS idx_quality_checks_queued
    ON quality_checks (id) WHERE status IN ('queued', 'running');
-- History by time ("what did the checks find today") and retention.
CREATE INDEX IF NOT EXISTS idx_quality_checks_requested_at
    ON quality_checks (requested_at);

-- ---------------------------------------------------------------- privileges and RLS
GRANT SELECT, INSERT, UPDATE, DELETE ON quality_checks TO mailpipe_app;
GRANT SELECT ON quality_checks TO mailpipe_analyst;

ALTER TABLE quality_checks ENABLE ROW LEVEL SECURITY;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE tablename = 'quality_checks'
                   AND policyname = 'quality_checks_app_all') THEN
        CREATE POLICY quality_checks_app_all ON quality_checks
            FOR ALL TO mailpipe_app USING (true) WITH CHECK (true);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE tablename = 'quality_checks'
                   AND policyname = 'quality_checks_analyst_read') THEN
        CREATE POLICY quality_checks_analyst_read ON quality_checks
            FOR SELECT TO mailpipe_analyst USING (true);
    END IF;
END
$$;

-- ---------------------------------------------------------------- documentation
COMMENT ON TABLE quality_checks IS
    'One row per post-run data-quality check (Great Expectations): requested by a flow run, answered by a `mailpipe check worker` or, when none is running, by the flow run itself.';
COMMENT ON COLUMN quality_checks.flow_name IS 'The flow whose checkpoint ran (process_email_queue, ...).';
COMMENT ON COLUMN quality_checks.flow_run_id IS 'The Prefect flow run that asked, when run under Prefect.';
COMMENT ON COLUMN quality_checks.since IS 'Window start: large tables were checked on rows changed since then (the check subtracts a 60 s clock-skew margin). NULL: whole tables.';
COMMENT ON COLUMN quality_checks.status IS 'queued (waiting for a worker), running, passed (every invariant held), failed (at least one expectation failed, any policy), error (the check could not run; see error).';
COMMENT ON COLUMN quality_checks.checked_by IS 'worker <host>:<pid> or inline <host>:<pid> (the flow run checked itself).';
COMMENT ON COLUMN quality_checks.worker_pid IS 'Backend pid of the worker session holding advisory lock (7240001, pid) while it lives: a running row whose lock is gone was abandoned.';
COMMENT ON COLUMN quality_checks.elapsed_seconds IS 'Time the checkpoints took (Data Docs are built after the answer).';
COMMENT ON COLUMN quality_checks.failed_suites IS 'Suites with policy fail that found broken invariants (the flow run ended Failed).';
COMMENT ON COLUMN quality_checks.warning_suites IS 'Suites with policy warn that found broken invariants (a data_quality alert fired).';
COMMENT ON COLUMN quality_checks.report IS 'The full report (mailpipe.quality.QualityReport.as_dict(full=True)): every expectation, samples of unexpected rows, Data Docs paths.';
COMMENT ON COLUMN quality_checks.error IS 'Why the check could not run (database unreachable, suites out of sync), without secrets.';
