-- Why: snapshot_email_health (the former daily pg_cron job) aggregates the delivery and audit
-- tables into one row per (day, provider) plus one all-provider row per day, so the data team
-- reviews trends without scanning the raw tables. Each column's definition is in COMMENT ON:
-- what it counts, from which table, on which timestamp. Adds one partial index on
-- communication_events so a day's failures are read without reading the day's sends.

CREATE TABLE IF NOT EXISTS email_health_snapshots (
    snapshot_date             date NOT NULL,
    provider_name             text NOT NULL,
    timezone                  text NOT NULL,
    day_start                 timestamptz NOT NULL,
    day_end                   timestamptz NOT NULL,
    events_created            bigint NOT NULL DEFAULT 0,
    sent                      bigint NOT NULL DEFAULT 0,
    failed                    bigint NOT NULL DEFAULT 0,
    failed_invalid            bigint NOT NULL DEFAULT 0,
    failed_template           bigint NOT NULL DEFAULT 0,
    failed_suppressed         bigint NOT NULL DEFAULT 0,
    failed_rejected           bigint NOT NULL DEFAULT 0,
    failed_bounced            bigint NOT NULL DEFAULT 0,
    failed_retries_exhausted  bigint NOT NULL DEFAULT 0,
    failed_no_provider        bigint NOT NULL DEFAULT 0,
    failed_other              bigint NOT NULL DEFAULT 0,
    retried                   bigint NOT NULL DEFAULT 0,
    deferred                  bigint NOT NULL DEFAULT 0,
    suppressed                bigint NOT NULL DEFAULT 0,
    hard_bounces              bigint NOT NULL DEFAULT 0,
    delivery_success_rate     double precision,
    hard_bounce_rate          double precision,
    queue_latency_p50_seconds double precision,
    queue_latency_p95_seconds double precision,
    connection_attempts       bigint NOT NULL DEFAULT 0,
    connection_failures       bigint NOT NULL DEFAULT 0,
    availability              double precision,
    probe_latency_mean_ms     double precision,
    probe_latency_p95_ms      double precision,
    health_score              real,
    computed_at               timestamptz NOT NULL DEFAULT now(),
    -- '*' (not NULL) is the all-provider row: a NOT NULL key keeps the primary key, upserts
    -- (ON CONFLICT) and group-bys simple, and reads the same in SQL, pandas and CSV.
    CONSTRAINT email_health_snapshots_pkey PRIMARY KEY (snapshot_date, provider_name),
    CONSTRAINT email_health_snapshots_provider_name_check CHECK (btrim(provider_name) <> ''),
    CONSTRAINT email_health_snapshots_day_check CHECK (day_end > day_start),
    CONSTRAINT email_health_snapshots_counts_check CHECK (
        events_created >= 0 AND sent >= 0 AND retried >= 0 AND deferred >= 0
        AND suppressed >= 0 AND hard_bounces >= 0 AND connection_attempts >= 0
        AND failed_invalid >= 0 AND failed_template >= 0 AND failed_suppressed >= 0
        AND failed_rejected >= 0 AND failed_bounced >= 0 AND failed_retries_exhausted >= 0
        AND failed_no_provider >= 0 AND failed_other >= 0
        AND connection_failures BETWEEN 0 AND connection_attempts),
    CONSTRAINT email_health_snapshots_failed_by_class_check CHECK (
        failed = failed_invalid + failed_template + failed_suppressed + failed_rejected
                 + failed_bounced + failed_retries_exhausted + failed_no_provider + failed_other),
    CONSTRAINT email_health_snapshots_rates_check CHECK (
        (delivery_success_rate IS NULL OR delivery_success_rate BETWEEN 0 AND 1)
        AND (hard_bounce_rate IS NULL OR hard_bounce_rate BETWEEN 0 AND 1)
        AND (availability IS NULL OR availability BETWEEN 0 AND 1)),
    CONSTRAINT email_health_snapshots_latency_check CHECK (
        coalesce(queue_latency_p50_seconds, 0) >= 0
        AND coalesce(queue_latency_p95_seconds, 0) >= coalesce(queue_latency_p50_seconds, 0)
        AND coalesce(probe_latency_mean_ms, 0) >= 0 AND coalesce(probe_latency_p95_ms, 0) >= 0),
    CONSTRAINT email_health_snapshots_health_score_check CHECK (
        health_score IS NULL OR health_score BETWEEN 0 AND 100)
);

-- Per-provider history ("how did provider X do this quarter") without scanning every day.
CREATE INDEX IF NOT EXISTS idx_email_health_snapshots_provider_date
    ON email_health_snapshots (provider_name, snapshot_date);

-- The day's failed events for the failed_* counts. Without it they are picked out of every
-- event updated that day (each send updates its row): ~50x the reads on a day with 2 % failures.
-- Partial, so it costs nothing on the send path. (Built in the migration's transaction: it
-- blocks writes to communication_events for the few seconds a table scan takes.)
CREATE INDEX IF NOT EXISTS idx_communication_events_failed_updated_at
    ON communication_events (updated_at) WHERE status = 'failed';

-- ---------------------------------------------------------------- privileges and RLS
GRANT SELECT, INSERT, UPDATE, DELETE ON email_health_snapshots TO mailpipe_app;
GRANT SELECT ON email_health_snapshots TO mailpipe_analyst;

ALTER TABLE email_health_snapshots ENABLE ROW LEVEL SECURITY;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE tablename = 'email_health_snapshots'
                   AND policyname = 'email_health_snapshots_app_all') THEN
        CREATE POLICY email_health_snapshots_app_all ON email_health_snapshots
            FOR ALL TO mailpipe_app USING (true) WITH CHECK (true);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE tablename = 'email_health_snapshots'
                   AND policyname = 'email_health_snapshots_analyst_read') THEN
        CREATE POLICY email_health_snapshots_analyst_read ON email_health_snapshots
            FOR SELECT TO mailpipe_analyst USING (true);
    END IF;
END
$$;

-- ---------------------------------------------------------------- documentation
COMMENT ON TABLE email_health_snapshots IS
    'Daily delivery and provider health (snapshot_email_health): one row per (snapshot_date, provider_name) for every configured provider (zeros on a quiet day, never a gap) and any provider seen in that day''s data, plus the all-provider row provider_name = ''*''. Re-running a day replaces its rows in one transaction. Events never attributed to a provider (invalid at enqueue, no usable provider) count only in the ''*'' row, so per-provider rows need not sum to it.';
COMMENT ON COLUMN email_health_snapshots.snapshot_date IS
    'The calendar day in the timezone column (MAILPIPE_TIMEZONE when computed): rows with a timestamp in [day_start, day_end) belong to it.';
COMMENT ON COLUMN email_health_snapshots.provider_name IS
    'smtp_provider_configs.provider_name, or ''*'' for all providers together (including events with no provider).';
COMMENT ON COLUMN email_health_snapshots.timezone IS
    'IANA timezone the day was computed in (MAILPIPE_TIMEZONE).';
COMMENT ON COLUMN email_health_snapshots.day_start IS
    'Midnight starting snapshot_date in timezone (inclusive). A DST day is 23 or 25 hours long.';
COMMENT ON COLUMN email_health_snapshots.day_end IS
    'Midnight ending snapshot_date in timezone (exclusive).';
COMMENT ON COLUMN email_health_snapshots.events_created IS
    'communication_events with created_at in the day; per provider: by the provider that sent or last tried the event, as known when the snapshot was computed.';
COMMENT ON COLUMN email_health_snapshots.sent IS
    'Messages accepted by a provider: smtp_delivery_confirmations with created_at (accept time) in the day, by their provider_name.';
COMMENT ON COLUMN email_health_snapshots.failed IS
    'communication_events with status failed whose updated_at (the time they reached failed; failed is final) is in the day, by provider_name. Equals the sum of the failed_* columns.';
COMMENT ON COLUMN email_health_snapshots.failed_invalid IS 'failed with error_class invalid (bad address, missing template_key or event_type).';
COMMENT ON COLUMN email_health_snapshots.failed_template IS 'failed with error_class template (unknown template, missing variable, render error).';
COMMENT ON COLUMN email_health_snapshots.failed_suppressed IS 'failed with error_class suppressed.';
COMMENT ON COLUMN email_health_snapshots.failed_rejected IS 'failed with error_class rejected (5xx reply).';
COMMENT ON COLUMN email_health_snapshots.failed_bounced IS 'failed with error_class bounced (5xx on RCPT).';
COMMENT ON COLUMN email_health_snapshots.failed_retries_exhausted IS 'failed with error_class retries_exhausted (max retries reached).';
COMMENT ON COLUMN email_health_snapshots.failed_no_provider IS 'failed with error_class no_provider.';
COMMENT ON COLUMN email_health_snapshots.failed_other IS 'failed with any other error_class (transient, cancelled) or none.';
COMMENT ON COLUMN email_health_snapshots.retried IS
    'delivery_attempts with outcome retry (4xx or connection error, rescheduled) and attempted_at in the day, by the attempt''s provider_name. An event retried three times counts three.';
COMMENT ON COLUMN email_health_snapshots.deferred IS
    'delivery_attempts with outcome deferred (provider or domain rate limit) and attempted_at in the day.';
COMMENT ON COLUMN email_health_snapshots.suppressed IS
    'delivery_attempts with outcome suppressed (recipient on the suppression list, not sent) and attempted_at in the day.';
COMMENT ON COLUMN email_health_snapshots.hard_bounces IS
    'delivery_attempts with outcome bounced (5xx on RCPT) and attempted_at in the day.';
COMMENT ON COLUMN email_health_snapshots.delivery_success_rate IS
    'Fraction 0..1: sent / (sent + failed). NULL when both are 0 (nothing finished that day).';
COMMENT ON COLUMN email_health_snapshots.hard_bounce_rate IS
    'Fraction 0..1: hard_bounces / (sent + hard_bounces), the messages a receiving server accepted or hard-bounced (monitoring alerts at 0.05 warning, 0.10 critical). NULL when both are 0.';
COMMENT ON COLUMN email_health_snapshots.queue_latency_p50_seconds IS
    'Median of sent_at - created_at, in seconds, over communication_events with sent_at in the day (queue wait + retries + send). NULL when none was sent.';
COMMENT ON COLUMN email_health_snapshots.queue_latency_p95_seconds IS
    '95th percentile (continuous) of sent_at - created_at, seconds, same events as the median.';
COMMENT ON COLUMN email_health_snapshots.connection_attempts IS
    'smtp_connection_audit probes with connection_attempt_at in the day.';
COMMENT ON COLUMN email_health_snapshots.connection_failures IS
    'Of those probes, the ones whose result is not ok (refused, timeout, tls_error, auth_failed, smtp_error, dns_error, config_error, unknown).';
COMMENT ON COLUMN email_health_snapshots.availability IS
    'Fraction 0..1: ok probes / probes in the day. NULL when there was no probe.';
COMMENT ON COLUMN email_health_snapshots.probe_latency_mean_ms IS
    'Mean latency_ms of the day''s ok probes (a failed probe''s duration is its timeout, not a latency). NULL without an ok probe.';
COMMENT ON COLUMN email_health_snapshots.probe_latency_p95_ms IS
    '95th percentile (continuous) latency_ms of the day''s ok probes.';
COMMENT ON COLUMN email_health_snapshots.health_score IS
    'smtp_provider_configs.health_score (0-100) at the end of the day. The score has no history, so it is recorded only when the day is snapshotted before the following day ends (the nightly run for yesterday, or a provisional run for today); a later backfill or re-run keeps the value recorded then, else NULL. The ''*'' row has the mean over providers that are not disabled.';
COMMENT ON COLUMN email_health_snapshots.computed_at IS
    'When this row was computed (transaction time of the run that wrote it).';
