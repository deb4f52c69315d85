-- admin_get_provider --
-- One provider by name, with the columns of list_providers
SELECT id, provider_name, host, port, tls_mode, username, credentials, from_address, priority,
       timeout_seconds, max_connections, per_minute_limit, per_hour_limit, per_day_limit,
       status, suspended_until, health_score, consecutive_failures, last_checked
  FROM smtp_provider_configs
 WHERE provider_name = %s;

-- admin_lock_provider --
-- One provider's row, locked until the end of the transaction (an update reads, then writes)
SELECT id, provider_name, host, port, tls_mode, username, credentials, from_address, priority,
       timeout_seconds, max_connections, per_minute_limit, per_hour_limit, per_day_limit,
       status, suspended_until, health_score, consecutive_failures, last_checked
  FROM smtp_provider_configs
 WHERE provider_name = %s
   FOR UPDATE;

-- admin_insert_provider --
-- Add an active provider (credentials is a reference: the table's CHECK refuses anything else)
INSERT INTO smtp_provider_configs (provider_name, host, port, tls_mode, username, credentials,
                                   from_address, priority, timeout_seconds, max_connections,
                                   per_minute_limit, per_hour_limit, per_day_limit)
VALUES (%(provider_name)s, %(host)s, %(port)s, %(tls_mode)s, %(username)s, %(credentials)s,
        %(from_address)s, %(priority)s, %(timeout_seconds)s, %(max_connections)s,
        %(per_minute_limit)s, %(per_hour_limit)s, %(per_day_limit)s)
RETURNING id, provider_name, host, port, tls_mode, username, credentials, from_address, priority,
          timeout_seconds, max_connections, per_minute_limit, per_hour_limit, per_day_limit,
          status, suspended_until, health_score, consecutive_failures, last_checked;

-- admin_update_provider --
-- Write a provider's settings (not its status or health, which the flows own)
UPDATE smtp_provider_configs
   SET host = %(host)s, port = %(port)s, tls_mode = %(tls_mode)s, username = %(username)s,
       credentials = %(credentials)s, from_address = %(from_address)s,
       priority = %(priority)s, timeout_seconds = %(timeout_seconds)s,
       max_connections = %(max_connections)s, per_minute_limit = %(per_minute_limit)s,
       per_hour_limit = %(per_hour_limit)s, per_day_limit = %(per_day_limit)s,
       updated_at = now()
 WHERE provider_name = %(provider_name)s
RETURNING id, provider_name, host, port, tls_mode, username, credentials, from_address, priority,
          timeout_seconds, max_connections, per_minute_limit, per_hour_limit, per_day_limit,
          status, suspended_until, health_score, consecutive_failures, last_checked;

-- admin_delete_provider --
-- Remove a provider (audit rows, confirmations and counters keep its name as text)
DELETE FROM smtp_provider_configs WHERE provider_name = %s;

-- admin_suspend_provider --
-- Suspend for N seconds (the flow tries again afterwards) or, with NULL, disable until resumed
UPDATE smtp_provider_configs
   SET status = CASE WHEN %(seconds)s::float8 IS NULL THEN 'disabled' ELSE 'suspended' END,
       suspended_until = CASE WHEN %(seconds)s::float8 IS NULL THEN NULL
                              ELSE now() + make_interval(secs => %(seconds)s::float8) END,
       updated_at = now()
 WHERE provider_name = %(provider_name)s
RETURNING id, provider_name, host, port, tls_mode, username, credentials, from_address, priority,
          timeout_seconds, max_connections, per_minute_limit, per_hour_limit, per_day_limit,
          status, suspended_until, health_score, consecutive_failures, last_checked;

-- admin_resume_provider --
-- Back to active now, with a clean failure count
UPDATE smtp_provider_configs
   SET status = 'active', suspended_until = NULL, consecutive_failures = 0, updated_at = now()
 WHERE provider_name = %s
RETURNING id, provider_name, host, port, tls_mode, username, credentials, from_address, priority,
          timeout_seconds, max_connections, per_minute_limit, per_hour_limit, per_day_limit,
          status, suspended_until, health_score, consecutive_failures, last_checked;

-- admin_provider_activity_today --
-- Per provider since local midnight: accepted messages and permanent failures (bounces included)
WITH since AS (
    SELECT date_trunc('day', now() AT TIME ZONE %(timezone)s) AT TIME ZONE %(timezone)s AS t
), sent AS (
    SELECT provider_name, count(*) AS n
      FROM smtp_delivery_confirmations, since
     WHERE created_at >= since.t
     GROUP BY provider_name
), failed AS (
    SELECT provider_name, count(*) AS n
      FROM delivery_attempts, since
     WHERE attempted_at >= since.t AND outcome IN ('failed', 'bounced')
     GROUP BY provider_name
)
SELECT p.provider_name, coalesce(sent.n, 0)::int AS sent, coalesce(failed.n, 0)::int AS failed
  FROM smtp_provider_configs p
  LEFT JOIN sent USING (provider_name)
  LEFT JOIN failed USING (provider_name);

-- admin_preview_event --
-- What a template preview of an existing event needs
SELECT id, recipient_email, template_key, coalesce(payload, '{}'::jsonb) AS payload, message_id
  FROM communication_events
 WHERE id = (event_ids(ARRAY[%s::text]))[1];

-- admin_message_id_domain --
-- The domain new_message_id() puts in Message-IDs (for a preview's placeholder Message-ID)
SELECT coalesce(nullif(current_setting('mailpipe.message_id_domain', true), ''),
                'mailpipe.local') AS domain;

-- admin_template_version --
-- One version of a template, active or not
SELECT template_key, version, subject, text_body, html_body, from_address, active, created_at
  FROM email_templates
 WHERE template_key = %s AND version = %s;

-- admin_active_template --
-- The active version of one template
SELECT template_key, version, subject, text_body, html_body, from_address, active, created_at
  FROM email_templates
 WHERE template_key = %s AND active;

-- admin_template_versions --
-- Every version of one template, newest first
SELECT template_key, version, active, subject, from_address, created_at,
       html_body IS NOT NULL AS has_html
  FROM email_templates
 WHERE template_key = %s
 ORDER BY version DESC;

-- admin_list_templates --
-- One row per template key (keys without an active version only when asked)
SELECT template_key,
       max(version) FILTER (WHERE active) AS active_version,
       count(*)::int AS versions,
       (array_agg(subject ORDER BY active DESC, version DESC))[1] AS subject,
       (array_agg(from_address ORDER BY active DESC, version DESC))[1] AS from_address,
       bool_or(html_body IS NOT NULL AND active) AS has_html,
       max(created_at) AS updated_at
  FROM email_templates
 GROUP BY template_key
HAVING bool_or(active) OR %s
 ORDER BY template_key;

-- admin_events_using_template --
-- Queued or in-flight events that need this template
SELECT count(*)::int FROM communication_events
 WHERE template_key = %s AND status IN ('queued', 'processing');

-- admin_queue_counts --
-- Events by status and priority
SELECT status, priority, count(*)::int AS events
  FROM communication_events
 GROUP BY status, priority
 ORDER BY status, priority;

-- admin_queue_times --
-- Due now, the oldest due event, the next scheduled one, and leases past their expiry
SELECT count(*) FILTER (WHERE status = 'queued' AND scheduled_at <= now())::int AS due,
       min(scheduled_at) FILTER (WHERE status = 'queued' AND scheduled_at <= now())
           AS oldest_due_at,
       min(scheduled_at) FILTER (WHERE status = 'queued' AND scheduled_at > now())
           AS next_scheduled_at,
       count(*) FILTER (WHERE status = 'processing' AND lease_expires_at < now())::int
           AS expired_leases,
       now() AS now
  FROM communication_events
 WHERE status IN ('queued', 'processing');

-- admin_list_events --
-- Events matching the given filters (NULL: any), most recently changed first
SELECT id, status, priority, recipient_email, template_key, retry_count, scheduled_at,
       updated_at, sent_at, provider_name, error_class, last_error, message_id
  FROM communication_events
 WHERE (%(statuses)s::text[] IS NULL OR status::text = ANY(%(statuses)s::text[]))
   AND (%(since_seconds)s::float8 IS NULL
        OR updated_at >= now() - make_interval(secs => %(since_seconds)s::float8))
   AND (%(ids)s::text[] IS NULL OR id = ANY(event_ids(%(ids)s::text[])))
   AND (%(template)s::text IS NULL OR template_key = %(template)s::text)
   AND (%(recipient)s::text IS NULL OR lower(recipient_email) = %(recipient)s::text)
 ORDER BY updated_at DESC, id DESC
 LIMIT %(limit)s;

-- admin_event_statuses --
-- The status of each of these events (to explain why one was left alone)
SELECT id, status FROM communication_events WHERE id = ANY(event_ids(%s::text[]));

-- admin_retry_events --
-- Requeue one batch of matching finished events (row locks; never processing or sent), keeping the Message-ID
WITH picked AS (
    SELECT id FROM communication_events
     WHERE status::text = ANY(%(statuses)s::text[])
       AND status IN ('failed', 'cancelled', 'suppressed')
       AND (%(after)s::text IS NULL OR id > (event_ids(ARRAY[%(after)s::text]))[1])
       AND (%(ids)s::text[] IS NULL OR id = ANY(event_ids(%(ids)s::text[])))
       AND (%(template)s::text IS NULL OR template_key = %(template)s::text)
       AND (%(since_seconds)s::float8 IS NULL
            OR updated_at >= now() - make_interval(secs => %(since_seconds)s::float8))
     ORDER BY id
     LIMIT %(batch)s
       FOR UPDATE SKIP LOCKED
)
UPDATE communication_events e
   SET status = 'queued',
       scheduled_at = now(),
       retry_count = CASE WHEN %(reset)s THEN 0 ELSE e.retry_count END,
       last_error = left('requeued by operator; previous error: '
                         || coalesce(e.last_error, 'none'), 2000),
       error_class = NULL,
       sent_at = NULL,
       lease_expires_at = NULL,
       locked_by = NULL,
       updated_at = now()
  FROM picked
 WHERE e.id = picked.id
RETURNING e.id, e.status;

-- admin_cancel_events --
-- Cancel one batch of queued events (a claimed, processing one is skipped: it is being sent)
WITH picked AS (
    SELECT id FROM communication_events
     WHERE status = 'queued'
       AND (%(after)s::text IS NULL OR id > (event_ids(ARRAY[%(after)s::text]))[1])
       AND (%(ids)s::text[] IS NULL OR id = ANY(event_ids(%(ids)s::text[])))
       AND (%(template)s::text IS NULL OR template_key = %(template)s::text)
     ORDER BY id
     LIMIT %(batch)s
       FOR UPDATE SKIP LOCKED
)
UPDATE communication_events e
   SET status = 'cancelled', error_class = 'cancelled', last_error = 'cancelled by operator',
       updated_at = now()
  FROM picked
 WHERE e.id = picked.id
RETURNING e.id, e.status;

-- admin_count_purgeable --
-- How many finished events a purge would delete, and its cutoff (fixed for the whole purge)
SELECT count(*)::int AS events, now() - make_interval(secs => %(seconds)s::float8) AS cutoff
  FROM communication_events
 WHERE status::text = ANY(%(statuses)s::text[])
   AND status IN ('sent', 'failed', 'cancelled', 'suppressed')
   AND updated_at < now() - make_interval(secs => %(seconds)s::float8);

-- admin_purge_events --
-- Delete one batch of old finished events; confirmations and attempts keep their rows (FK SET NULL)
WITH doomed AS (
    SELECT id FROM communication_events
     WHERE status::text = ANY(%(statuses)s::text[])
       AND status IN ('sent', 'failed', 'cancelled', 'suppressed')
       AND updated_at < %(cutoff)s
     LIMIT %(batch)s
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM communication_events e USING doomed WHERE e.id = doomed.id RETURNING 1
)
SELECT count(*)::int AS deleted FROM gone;

-- admin_event_id_type --
-- The type of communication_events.id (bigint on mailpipe's databases, uuid on the adopted app's)
SELECT format_type(atttypid, atttypmod) AS id_type
  FROM pg_attribute WHERE attrelid = 'communication_events'::regclass AND attname = 'id';
