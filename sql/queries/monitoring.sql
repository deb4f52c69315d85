-- insert_connection_audit --
-- One smtp_connection_audit row per probe of a monitor_smtp_health run, in one statement
INSERT INTO smtp_connection_audit (provider_name, host, connection_attempt_at, ip_address, result,
                                   success, latency_ms, error_text)
SELECT name, host, attempted_at, ip, result, result = 'ok', latency_ms, error_text
  FROM unnest(%(names)s::text[], %(hosts)s::text[], %(attempted_at)s::timestamptz[],
              %(ips)s::inet[], %(results)s::text[], %(latencies)s::real[], %(errors)s::text[])
       AS p(name, host, attempted_at, ip, result, latency_ms, error_text);

-- recent_probe_results --
-- The last N probes of each named provider, newest first (index on provider_name, time)
SELECT p.name AS provider_name, a.result, a.latency_ms, a.connection_attempt_at
  FROM unnest(%(names)s::text[]) AS p(name)
 CROSS JOIN LATERAL (
       SELECT result, latency_ms, connection_attempt_at
         FROM smtp_connection_audit
        WHERE provider_name = p.name
        ORDER BY connection_attempt_at DESC
        LIMIT %(limit)s) AS a
 ORDER BY p.name, a.connection_attempt_at DESC;

-- provider_delivery_outcomes --
-- Accepted messages and provider-attributable failures (retry, failed, failover) per provider in a window
SELECT provider_name, sum(sent)::bigint AS sent, sum(failures)::bigint AS failures
  FROM (SELECT provider_name, count(*) AS sent, 0 AS failures
          FROM smtp_delivery_confirmations
         WHERE created_at >= now() - %(window)s::interval AND provider_name = ANY(%(names)s)
         GROUP BY provider_name
        UNION ALL
        SELECT provider_name, 0, count(*)
          FROM delivery_attempts
         WHERE attempted_at >= now() - %(window)s::interval AND provider_name = ANY(%(names)s)
           AND outcome IN ('retry', 'failed', 'failover')
         GROUP BY provider_name) AS outcomes
 GROUP BY provider_name;

-- update_provider_health --
-- Store each probed provider's health score and when it was checked, in one statement
UPDATE smtp_provider_configs AS p
   SET health_score = h.score, last_checked = h.checked_at, updated_at = now()
  FROM unnest(%(names)s::text[], %(scores)s::real[], %(checked_at)s::timestamptz[])
       AS h(name, score, checked_at)
 WHERE p.provider_name = h.name;

-- metrics_queue --
-- Queue depth, due backlog and its oldest event, retry backlog, leases in flight and expired
SELECT
    (SELECT count(*) FROM communication_events WHERE status = 'queued') AS queued,
    due.due, due.oldest_due_at, due.retry_backlog,
    (SELECT count(*) FROM communication_events WHERE status = 'processing') AS processing,
    stuck.stuck, stuck.oldest_expired_lease,
    now() AS measured_at
  FROM (SELECT count(*) AS due, min(scheduled_at) AS oldest_due_at,
               count(*) FILTER (WHERE retry_count > 0) AS retry_backlog
          FROM communication_events
         WHERE status = 'queued' AND scheduled_at <= now()) AS due,
       (SELECT count(*) AS stuck, min(lease_expires_at) AS oldest_expired_lease
          FROM communication_events
         WHERE status = 'processing' AND lease_expires_at < now()) AS stuck;

-- metrics_delivery_by_provider --
-- Accepted, complained, bounced after acceptance (feedback) and each unsuccessful outcome per provider (NULL: none) in a window
SELECT provider_name,
       sum(sent)::bigint AS sent, sum(complaints)::bigint AS complaints,
       sum(feedback_bounced)::bigint AS feedback_bounced,
       sum(retries)::bigint AS retries, sum(failed)::bigint AS failed,
       sum(bounced)::bigint AS bounced, sum(failovers)::bigint AS failovers,
       sum(deferred)::bigint AS deferred, sum(suppressed)::bigint AS suppressed
  FROM (SELECT provider_name, count(*) AS sent,
               count(*) FILTER (WHERE status = 'complained') AS complaints,
               -- Messages sent in the window that a provider later reported hard-bounced.
               count(*) FILTER (WHERE status = 'bounced') AS feedback_bounced,
               0 AS retries, 0 AS failed, 0 AS bounced, 0 AS failovers, 0 AS deferred,
               0 AS suppressed
          FROM smtp_delivery_confirmations
         WHERE created_at >= now() - %(window)s::interval
         GROUP BY provider_name
        UNION ALL
        SELECT provider_name, 0, 0, 0,
               count(*) FILTER (WHERE outcome = 'retry'),
               count(*) FILTER (WHERE outcome = 'failed'),
               -- 5xx on RCPT only: the bounced attempt apply_feedback_batch records for a
               -- reported bounce ('feedback <provider>: ...') is counted above, by its message.
               count(*) FILTER (WHERE outcome = 'bounced'
                                  AND coalesce(error, '') NOT LIKE 'feedback %%'),
               count(*) FILTER (WHERE outcome = 'failover'),
               count(*) FILTER (WHERE outcome = 'deferred'),
               count(*) FILTER (WHERE outcome = 'suppressed')
          FROM delivery_attempts
         WHERE attempted_at >= now() - %(window)s::interval
         GROUP BY provider_name) AS outcomes
 GROUP BY provider_name;

-- metrics_probes_by_provider --
-- Probes and successful probes per provider in a window (provider availability)
SELECT provider_name, count(*) AS probes, count(*) FILTER (WHERE result = 'ok') AS probes_ok
  FROM smtp_connection_audit
 WHERE connection_attempt_at >= now() - %(window)s::interval
 GROUP BY provider_name;

-- metrics_suppressions_added --
-- Suppression list growth in a window, by reason
SELECT reason, count(*) AS added
  FROM email_suppressions
 WHERE created_at >= now() - %(window)s::interval
 GROUP BY reason;

-- metrics_rate_limit_windows --
-- Rate-limit windows that deferred sends and were still being hit in a window (violations)
SELECT scope, key, window_size, window_start, count, limit_value, deferred, updated_at
  FROM rate_limit_counters
 WHERE window_start >= now() - %(window)s::interval - interval '1 day'
   AND updated_at >= now() - %(window)s::interval
   AND deferred > 0
 ORDER BY deferred DESC, scope, key, window_size;

-- metrics_provider_states --
-- Every provider's status, suspension, score and latest probe (provider availability now)
SELECT p.provider_name, p.status, p.suspended_until, p.health_score, p.last_checked,
       p.consecutive_failures, a.result AS last_result, a.connection_attempt_at AS last_probe_at,
       now() AS measured_at
  FROM smtp_provider_configs AS p
  LEFT JOIN LATERAL (
       SELECT result, connection_attempt_at
         FROM smtp_connection_audit
        WHERE provider_name = p.provider_name
        ORDER BY connection_attempt_at DESC
        LIMIT 1) AS a ON true
 ORDER BY p.priority, p.provider_name;

-- alerts_lock --
-- Serialise alert bookkeeping between concurrent monitor runs (held until commit)
SELECT pg_advisory_xact_lock(7170117310);

-- alerts_firing --
-- The firing alerts, locked for this run's bookkeeping
SELECT id, rule, scope, severity, status, value, threshold, message, details, opened_at,
       last_seen_at, resolved_at, occurrences
  FROM alerts
 WHERE status = 'firing'
   FOR UPDATE;

-- alerts_open --
-- Open new alerts; a firing one for the same rule and scope makes the insert a no-op
INSERT INTO alerts (rule, scope, severity, value, threshold, message, details)
SELECT * FROM unnest(%(rules)s::text[], %(scopes)s::text[], %(severities)s::text[],
                     %(values)s::float8[], %(thresholds)s::float8[], %(messages)s::text[],
                     %(details)s::jsonb[])
ON CONFLICT (rule, scope) WHERE status = 'firing' DO NOTHING
RETURNING id, rule, scope, severity, status, value, threshold, message, details, opened_at,
          last_seen_at, resolved_at, occurrences;

-- alerts_refresh --
-- Alerts still firing: latest value, severity and message; one more occurrence
UPDATE alerts AS a
   SET severity = r.severity, value = r.value, threshold = r.threshold, message = r.message,
       details = r.details, last_seen_at = now(), occurrences = a.occurrences + 1
  FROM unnest(%(ids)s::bigint[], %(severities)s::text[], %(values)s::float8[],
              %(thresholds)s::float8[], %(messages)s::text[], %(details)s::jsonb[])
       AS r(id, severity, value, threshold, message, details)
 WHERE a.id = r.id AND a.status = 'firing'
RETURNING a.id, a.rule, a.scope, a.severity, a.status, a.value, a.threshold, a.message,
          a.details, a.opened_at, a.last_seen_at, a.resolved_at, a.occurrences;

-- alerts_resolve --
-- Resolve alerts whose condition no longer holds
UPDATE alerts
   SET status = 'resolved', resolved_at = now()
 WHERE id = ANY(%(ids)s) AND status = 'firing'
RETURNING id, rule, scope, severity, status, value, threshold, message, details, opened_at,
          last_seen_at, resolved_at, occurrences;

-- alerts_recent --
-- Firing alerts and those resolved in a window, newest first (for `mailpipe metrics`)
SELECT id, rule, scope, severity, status, value, threshold, message, details, opened_at,
       last_seen_at, resolved_at, occurrences
  FROM alerts
 WHERE status = 'firing' OR resolved_at >= now() - %(window)s::interval
 ORDER BY status = 'firing' DESC, coalesce(resolved_at, opened_at) DESC;
