-- snapshots_today --
-- Today's date in a timezone, by the database clock (the nightly run snapshots the day before)
SELECT (now() AT TIME ZONE %(tz)s)::date AS today;

-- snapshots_day_bounds --
-- The instants a local calendar day starts and ends in a timezone (23 or 25 hours on DST days)
SELECT %(day)s::date::timestamp AT TIME ZONE %(tz)s AS day_start,
       (%(day)s::date + 1)::timestamp AT TIME ZONE %(tz)s AS day_end;

-- snapshots_work_mem --
-- Memory for the day's sorts (latency percentiles over up to millions of rows), this transaction only
SET LOCAL work_mem = '64MB';

-- snapshots_compute_day --
-- Aggregate one day (index range scans only) and replace its rows: upsert, then drop stale ones
WITH created AS (
    -- Three range scans of communication_events, one index each (created_at, sent_at, failed
    -- rows' updated_at), rather than one scan with an OR of the ranges: the planner treats the
    -- ranges as independent, overestimates the rows and falls back to a full table scan.
    SELECT CASE WHEN grouping(provider_name) = 1 THEN '*' ELSE provider_name END AS key,
           count(*) AS events_created
      FROM communication_events
     WHERE created_at >= %(day_start)s AND created_at < %(day_end)s
     GROUP BY GROUPING SETS ((provider_name), ())
),
delivered AS (
    -- Percentiles cannot be hashed: rows are sorted by provider, then within each group.
    -- COLLATE "C" compares bytes, cheaper than the database's linguistic collation.
    SELECT CASE WHEN grouping(provider) = 1 THEN '*' ELSE provider END AS key,
           -- Both percentiles from one sort per group.
           percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY latency) AS latency
      FROM (SELECT provider_name COLLATE "C" AS provider,
                   -- Clock skew between the app's and a worker's host must not go negative.
                   greatest(date_part('epoch', sent_at - created_at), 0) AS latency
              FROM communication_events
             WHERE sent_at >= %(day_start)s AND sent_at < %(day_end)s) AS sent_events
     GROUP BY GROUPING SETS ((provider), ())
),
failures AS (
    -- Reads idx_communication_events_failed_updated_at (0005): the day's failed rows only.
    SELECT CASE WHEN grouping(provider_name) = 1 THEN '*' ELSE provider_name END AS key,
           count(*) AS failed,
           count(*) FILTER (WHERE error_class = 'invalid') AS failed_invalid,
           count(*) FILTER (WHERE error_class = 'template') AS failed_template,
           count(*) FILTER (WHERE error_class = 'suppressed') AS failed_suppressed,
           count(*) FILTER (WHERE error_class = 'rejected') AS failed_rejected,
           count(*) FILTER (WHERE error_class = 'bounced') AS failed_bounced,
           count(*) FILTER (WHERE error_class = 'retries_exhausted') AS failed_retries_exhausted,
           count(*) FILTER (WHERE error_class = 'no_provider') AS failed_no_provider,
           count(*) FILTER (WHERE error_class IS NULL OR error_class NOT IN
               ('invalid', 'template', 'suppressed', 'rejected', 'bounced', 'retries_exhausted',
                'no_provider')) AS failed_other
      FROM communication_events
     WHERE status = 'failed' AND updated_at >= %(day_start)s AND updated_at < %(day_end)s
     GROUP BY GROUPING SETS ((provider_name), ())
),
confirmed AS (
    SELECT CASE WHEN grouping(provider_name) = 1 THEN '*' ELSE provider_name END AS key,
           count(*) AS sent
      FROM smtp_delivery_confirmations
     WHERE created_at >= %(day_start)s AND created_at < %(day_end)s
     GROUP BY GROUPING SETS ((provider_name), ())
),
attempts AS (
    SELECT CASE WHEN grouping(a.provider_name) = 1 THEN '*' ELSE a.provider_name END AS key,
           count(*) FILTER (WHERE a.outcome = 'retry') AS retried,
           count(*) FILTER (WHERE a.outcome = 'deferred') AS deferred,
           count(*) FILTER (WHERE a.outcome = 'suppressed') AS suppressed,
           count(*) FILTER (WHERE a.outcome = 'bounced') AS hard_bounces,
           -- Bounces of messages a provider accepted this same day (a bounce reported by
           -- feedback after the 250): the message is in `sent` already, so hard_bounce_rate's
           -- denominator must not count it twice. One index probe per bounced row (0006).
           count(*) FILTER (WHERE a.outcome = 'bounced' AND EXISTS (
               SELECT 1 FROM smtp_delivery_confirmations AS c
                WHERE c.communication_event_id = a.communication_event_id
                  AND c.created_at >= %(day_start)s AND c.created_at < %(day_end)s))
               AS hard_bounces_of_sent
      FROM delivery_attempts AS a
     WHERE a.attempted_at >= %(day_start)s AND a.attempted_at < %(day_end)s
     GROUP BY GROUPING SETS ((a.provider_name), ())
),
feedback AS (
    -- What providers reported after accepting (0011): applied events received in the day,
    -- each message counted once per kind, by the provider of the confirmation it matched.
    SELECT CASE WHEN grouping(c.provider_name) = 1 THEN '*' ELSE c.provider_name END AS key,
           count(DISTINCT f.confirmation_id) FILTER (WHERE f.kind = 'delivered') AS delivered,
           count(DISTINCT f.confirmation_id) FILTER (WHERE f.kind = 'hard_bounce') AS bounced,
           count(DISTINCT f.confirmation_id) FILTER (WHERE f.kind = 'complaint') AS complained
      FROM email_feedback_events AS f
      JOIN smtp_delivery_confirmations AS c ON c.id = f.confirmation_id
     WHERE f.received_at >= %(day_start)s AND f.received_at < %(day_end)s
       AND f.state = 'applied' AND f.kind IN ('delivered', 'hard_bounce', 'complaint')
     GROUP BY GROUPING SETS ((c.provider_name), ())
),
probes AS (
    SELECT CASE WHEN grouping(provider) = 1 THEN '*' ELSE provider END AS key,
           count(*) AS connection_attempts,
           count(*) FILTER (WHERE result IS DISTINCT FROM 'ok') AS connection_failures,
           avg(latency_ms) FILTER (WHERE result = 'ok') AS probe_latency_mean_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE result = 'ok')
               AS probe_latency_p95_ms
      FROM (SELECT provider_name COLLATE "C" AS provider, result, latency_ms
              FROM smtp_connection_audit
             WHERE connection_attempt_at >= %(day_start)s
               AND connection_attempt_at < %(day_end)s) AS day_probes
     GROUP BY GROUPING SETS ((provider), ())
),
providers AS (
    -- The score has no history: it stands for the end of the day only while the day (or the
    -- day before today) is current; older days get NULL and keep any value recorded earlier.
    SELECT provider_name AS key,
           CASE WHEN now() < %(day_end)s::timestamptz + interval '1 day' THEN health_score END
               AS health_score,
           status
      FROM smtp_provider_configs
     WHERE created_at < %(day_end)s
),
keys AS (
    SELECT '*' AS key
    UNION SELECT key FROM providers
    UNION SELECT key FROM created WHERE key IS NOT NULL
    UNION SELECT key FROM delivered WHERE key IS NOT NULL
    UNION SELECT key FROM failures WHERE key IS NOT NULL
    UNION SELECT key FROM confirmed WHERE key IS NOT NULL
    UNION SELECT key FROM attempts WHERE key IS NOT NULL
    UNION SELECT key FROM probes WHERE key IS NOT NULL
    UNION SELECT key FROM feedback WHERE key IS NOT NULL
),
computed AS (
    SELECT k.key,
           coalesce(cr.events_created, 0) AS events_created,
           coalesce(c.sent, 0) AS sent,
           coalesce(ev.failed, 0) AS failed,
           coalesce(ev.failed_invalid, 0) AS failed_invalid,
           coalesce(ev.failed_template, 0) AS failed_template,
           coalesce(ev.failed_suppressed, 0) AS failed_suppressed,
           coalesce(ev.failed_rejected, 0) AS failed_rejected,
           coalesce(ev.failed_bounced, 0) AS failed_bounced,
           coalesce(ev.failed_retries_exhausted, 0) AS failed_retries_exhausted,
           coalesce(ev.failed_no_provider, 0) AS failed_no_provider,
           coalesce(ev.failed_other, 0) AS failed_other,
           coalesce(a.retried, 0) AS retried,
           coalesce(a.deferred, 0) AS deferred,
           coalesce(a.suppressed, 0) AS suppressed,
           coalesce(a.hard_bounces, 0) AS hard_bounces,
           coalesce(a.hard_bounces_of_sent, 0) AS hard_bounces_of_sent,
           d.latency[1] AS queue_latency_p50_seconds,
           d.latency[2] AS queue_latency_p95_seconds,
           coalesce(p.connection_attempts, 0) AS connection_attempts,
           coalesce(p.connection_failures, 0) AS connection_failures,
           p.probe_latency_mean_ms,
           p.probe_latency_p95_ms,
           CASE WHEN k.key = '*'
                THEN (SELECT avg(health_score) FROM providers WHERE status <> 'disabled')
                ELSE pr.health_score END AS health_score,
           coalesce(fb.delivered, 0) AS delivered,
           coalesce(fb.bounced, 0) AS bounced,
           coalesce(fb.complained, 0) AS complained
      FROM keys k
      LEFT JOIN created cr ON cr.key = k.key
      LEFT JOIN delivered d ON d.key = k.key
      LEFT JOIN failures ev ON ev.key = k.key
      LEFT JOIN confirmed c ON c.key = k.key
      LEFT JOIN attempts a ON a.key = k.key
      LEFT JOIN probes p ON p.key = k.key
      LEFT JOIN providers pr ON pr.key = k.key
      LEFT JOIN feedback fb ON fb.key = k.key
),
upserted AS (
    INSERT INTO email_health_snapshots AS s (
        snapshot_date, provider_name, timezone, day_start, day_end,
        events_created, sent, failed, failed_invalid, failed_template, failed_suppressed,
        failed_rejected, failed_bounced, failed_retries_exhausted, failed_no_provider,
        failed_other, retried, deferred, suppressed, hard_bounces,
        delivery_success_rate, hard_bounce_rate,
        queue_latency_p50_seconds, queue_latency_p95_seconds,
        connection_attempts, connection_failures, availability,
        probe_latency_mean_ms, probe_latency_p95_ms, health_score, computed_at,
        delivered, bounced, complained)
    SELECT %(day)s, key, %(tz)s, %(day_start)s, %(day_end)s,
           events_created, sent, failed, failed_invalid, failed_template, failed_suppressed,
           failed_rejected, failed_bounced, failed_retries_exhausted, failed_no_provider,
           failed_other, retried, deferred, suppressed, hard_bounces,
           -- Accepted among the messages that reached a final answer in the day.
           sent::float8 / nullif(sent + failed, 0),
           -- Bounces recorded in the day among the distinct messages accepted or bounced in
           -- the day: a message accepted, then reported bounced, counts once (in sent).
           hard_bounces::float8 / nullif(sent + hard_bounces - hard_bounces_of_sent, 0),
           queue_latency_p50_seconds, queue_latency_p95_seconds,
           connection_attempts, connection_failures,
           (connection_attempts - connection_failures)::float8 / nullif(connection_attempts, 0),
           probe_latency_mean_ms, probe_latency_p95_ms, health_score, now(),
           delivered, bounced, complained
      FROM computed
    ON CONFLICT (snapshot_date, provider_name) DO UPDATE SET
        timezone = EXCLUDED.timezone,
        day_start = EXCLUDED.day_start,
        day_end = EXCLUDED.day_end,
        events_created = EXCLUDED.events_created,
        sent = EXCLUDED.sent,
        failed = EXCLUDED.failed,
        failed_invalid = EXCLUDED.failed_invalid,
        failed_template = EXCLUDED.failed_template,
        failed_suppressed = EXCLUDED.failed_suppressed,
        failed_rejected = EXCLUDED.failed_rejected,
        failed_bounced = EXCLUDED.failed_bounced,
        failed_retries_exhausted = EXCLUDED.failed_retries_exhausted,
        failed_no_provider = EXCLUDED.failed_no_provider,
        failed_other = EXCLUDED.failed_other,
        retried = EXCLUDED.retried,
        deferred = EXCLUDED.deferred,
        suppressed = EXCLUDED.suppressed,
        hard_bounces = EXCLUDED.hard_bounces,
        delivery_success_rate = EXCLUDED.delivery_success_rate,
        hard_bounce_rate = EXCLUDED.hard_bounce_rate,
        queue_latency_p50_seconds = EXCLUDED.queue_latency_p50_seconds,
        queue_latency_p95_seconds = EXCLUDED.queue_latency_p95_seconds,
        connection_attempts = EXCLUDED.connection_attempts,
        connection_failures = EXCLUDED.connection_failures,
        availability = EXCLUDED.availability,
        probe_latency_mean_ms = EXCLUDED.probe_latency_mean_ms,
        probe_latency_p95_ms = EXCLUDED.probe_latency_p95_ms,
        -- A backfill cannot know a past day's score: keep the one the nightly run recorded.
        health_score = coalesce(EXCLUDED.health_score, s.health_score),
        computed_at = EXCLUDED.computed_at,
        delivered = EXCLUDED.delivered,
        bounced = EXCLUDED.bounced,
        complained = EXCLUDED.complained
    RETURNING s.provider_name
),
removed AS (
    -- Rows of providers that are gone (deleted config, no traffic left that day). The upsert
    -- and this delete touch disjoint rows, so one statement replaces the day atomically.
    DELETE FROM email_health_snapshots s
     WHERE s.snapshot_date = %(day)s
       AND s.provider_name NOT IN (SELECT provider_name FROM upserted)
    RETURNING s.provider_name
)
SELECT (SELECT count(*) FROM upserted) AS rows_written,
       (SELECT count(*) FROM removed) AS rows_removed;

-- snapshots_select_range --
-- Stored snapshot rows between two days (either bound may be NULL), '*' first within a day
SELECT *
  FROM email_health_snapshots
 WHERE snapshot_date >= coalesce(%(start)s::date, '-infinity'::date)
   AND snapshot_date <= coalesce(%(end)s::date, 'infinity'::date)
   AND (%(provider)s::text IS NULL OR provider_name = %(provider)s::text)
 ORDER BY snapshot_date, provider_name <> '*', provider_name;
