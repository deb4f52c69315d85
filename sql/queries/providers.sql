-- list_providers --
-- Every provider with its sending settings (credentials are a reference, never a secret)
SELECT id, provider_name, host, port, tls_mode, username, credentials, from_address, priority,
       timeout_seconds, max_connections, per_minute_limit, per_hour_limit, per_day_limit,
       status, suspended_until, health_score, consecutive_failures, last_checked
  FROM smtp_provider_configs
 ORDER BY priority, health_score DESC, provider_name;

-- record_provider_failure --
-- Count a connection-level failure, once per delivery run (run NULL: always, e.g. a probe); suspend with capped exponential backoff past the threshold
UPDATE smtp_provider_configs
   SET consecutive_failures = consecutive_failures + 1,
       status = CASE WHEN status <> 'disabled'
                      AND consecutive_failures + 1 >= %(threshold)s
                     THEN 'suspended' ELSE status END,
       suspended_until = CASE WHEN status <> 'disabled'
                               AND consecutive_failures + 1 >= %(threshold)s
                              THEN now() + make_interval(secs => least(
                                       %(base_seconds)s * power(2, consecutive_failures + 1 - %(threshold)s),
                                       %(max_seconds)s))
                              ELSE suspended_until END,
       last_failure_run = coalesce(%(run)s::text, last_failure_run),
       updated_at = now()
 WHERE provider_name = %(provider_name)s
   AND (%(run)s::text IS NULL OR last_failure_run IS DISTINCT FROM %(run)s::text)
RETURNING provider_name, status, suspended_until, consecutive_failures;

-- record_provider_success --
-- A working connection closes the circuit: back to active (half-open recovery)
UPDATE smtp_provider_configs
   SET consecutive_failures = 0,
       status = CASE WHEN status = 'suspended' THEN 'active' ELSE status END,
       suspended_until = CASE WHEN status = 'suspended' THEN NULL ELSE suspended_until END,
       updated_at = now()
 WHERE provider_name = %(provider_name)s
   AND (consecutive_failures <> 0 OR status = 'suspended');
