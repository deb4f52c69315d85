-- enqueue_event --
-- Insert one event; with an idempotency key a repeat returns nothing (see find_by_idempotency_key)
INSERT INTO communication_events (event_type, recipient_email, template_key, priority,
                                  scheduled_at, payload, idempotency_key)
VALUES (%(event_type)s, %(recipient_email)s, %(template_key)s, %(priority)s,
        coalesce(%(scheduled_at)s, now()), %(payload)s, %(idempotency_key)s)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, message_id, status, last_error;

-- find_by_idempotency_key --
-- The event an idempotency key already created
SELECT id, message_id, status, last_error FROM communication_events
 WHERE idempotency_key = %s;

-- rescue_expired_leases --
-- Put rows whose worker died (lease expired) back in the queue; they may have been sent
UPDATE communication_events
   SET status = 'queued', lease_expires_at = NULL, locked_by = NULL, may_be_duplicate = true,
       last_error = 'lease expired while processing (worker stopped?); requeued',
       updated_at = now()
 WHERE status = 'processing' AND lease_expires_at < now()
RETURNING id;

-- claim_due_events --
-- Claim up to N due events in priority order under a lease; concurrent workers skip each other's rows (event_priority: integer or the app's text priority)
WITH due AS (
    SELECT id FROM communication_events
     WHERE status = 'queued' AND scheduled_at <= now()
     ORDER BY event_priority(priority), scheduled_at, id
     LIMIT %(batch_size)s
       FOR UPDATE SKIP LOCKED
)
UPDATE communication_events e
   SET status = 'processing',
       lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
       locked_by = %(worker)s,
       last_attempt_at = now(),
       updated_at = now()
  FROM due
 WHERE e.id = due.id
RETURNING e.id, e.event_type, e.recipient_email, e.template_key,
          event_priority(e.priority) AS priority, e.scheduled_at,
          coalesce(e.payload, '{}'::jsonb) AS payload, e.message_id, e.retry_count, e.may_be_duplicate;

-- claim_due_events_up_to_priority --
-- claim_due_events for a priority lane: only events of priority max_priority or better (keep both in step)
WITH due AS (
    SELECT id FROM communication_events
     WHERE status = 'queued' AND scheduled_at <= now()
       AND event_priority(priority) <= %(max_priority)s
     ORDER BY event_priority(priority), scheduled_at, id
     LIMIT %(batch_size)s
       FOR UPDATE SKIP LOCKED
)
UPDATE communication_events e
   SET status = 'processing',
       lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
       locked_by = %(worker)s,
       last_attempt_at = now(),
       updated_at = now()
  FROM due
 WHERE e.id = due.id
RETURNING e.id, e.event_type, e.recipient_email, e.template_key,
          event_priority(e.priority) AS priority, e.scheduled_at,
          coalesce(e.payload, '{}'::jsonb) AS payload, e.message_id, e.retry_count, e.may_be_duplicate;

-- release_leases --
-- Put back the events these workers still hold (a deliverer stopping); no retry is counted
UPDATE communication_events
   SET status = 'queued', lease_expires_at = NULL, locked_by = NULL, may_be_duplicate = true,
       last_error = 'released by a stopping worker before its outcome was recorded; requeued',
       updated_at = now()
 WHERE status = 'processing' AND locked_by = ANY(%(workers)s)
RETURNING id;

-- finish_events --
-- Record the outcome of a batch in one statement; rows whose lease we lost are left alone
UPDATE communication_events e
   SET status = o.status,
       scheduled_at = coalesce(o.scheduled_at, e.scheduled_at),
       retry_count = e.retry_count + o.retried,
       last_error = o.last_error,
       error_class = o.error_class,
       provider_name = coalesce(o.provider_name, e.provider_name),
       sent_at = o.sent_at,
       may_be_duplicate = e.may_be_duplicate OR o.may_be_duplicate,
       lease_expires_at = NULL,
       locked_by = NULL,
       updated_at = now()
  FROM unnest(event_ids(%(ids)b::text[]), %(statuses)b::text[], %(scheduled_at)b::timestamptz[],
              %(retried)b::int[], %(last_errors)b::text[], %(error_classes)b::text[],
              %(providers)b::text[], %(sent_at)b::timestamptz[], %(duplicates)b::boolean[])
       AS o(id, status, scheduled_at, retried, last_error, error_class, provider_name, sent_at,
            may_be_duplicate)
 WHERE e.id = o.id AND e.status = 'processing' AND e.locked_by = %(worker)s
RETURNING e.id;

-- insert_confirmations --
-- One confirmation per accepted message, with the provider's own id from its 250 reply when it gave one (message_id is unique: a repeat only fills a missing provider id)
INSERT INTO smtp_delivery_confirmations AS c (communication_event_id, provider_name, message_id,
                                              recipient_email, status, smtp_code, smtp_response,
                                              may_be_duplicate, created_at, provider_message_id)
SELECT * FROM unnest(event_ids(%(ids)b::text[]), %(providers)b::text[], %(message_ids)b::text[],
                     %(recipients)b::text[], %(statuses)b::text[], %(codes)b::int[],
                     %(responses)b::text[], %(duplicates)b::boolean[], %(at)b::timestamptz[],
                     %(provider_message_ids)b::text[])
ON CONFLICT (message_id) DO UPDATE SET provider_message_id = EXCLUDED.provider_message_id
 WHERE c.provider_message_id IS NULL AND EXCLUDED.provider_message_id IS NOT NULL;

-- insert_attempts --
-- Unsuccessful attempts of a batch (retry, failed, bounced, deferred, suppressed, failover)
INSERT INTO delivery_attempts (communication_event_id, provider_name, outcome, smtp_code, error,
                               attempted_at)
SELECT * FROM unnest(event_ids(%(ids)b::text[]), %(providers)b::text[], %(outcomes)b::text[],
                     %(codes)b::int[], %(errors)b::text[], %(at)b::timestamptz[]);

-- active_suppressions --
-- Which of these addresses or domains are suppressed now, and why
SELECT address, kind, reason FROM email_suppressions
 WHERE address = ANY(%s) AND (expires_at IS NULL OR expires_at > now());

-- add_suppressions --
-- Suppress addresses (hard bounces, complaints, manual); an existing entry is kept
INSERT INTO email_suppressions (address, kind, reason, source, expires_at)
SELECT * FROM unnest(%(addresses)s::text[], %(kinds)s::text[], %(reasons)s::text[],
                     %(sources)s::text[], %(expires_at)s::timestamptz[])
ON CONFLICT (address) DO NOTHING;

-- reserve_send_quota --
-- Atomically take up to N sends from a provider's or domain's windows; returns how many were granted
SELECT reserve_send_quota(%(scope)s, %(key)s, %(windows)s::text[], %(limits)s::int[],
                          %(wanted)s) AS granted;

-- count_deferrals --
-- Count events deferred by a limit in the current window's counter row
INSERT INTO rate_limit_counters (scope, key, window_size, window_start, count, deferred)
VALUES (%(scope)s, %(key)s, %(window)s, date_trunc(%(window)s, now()), 0, %(deferred)s)
ON CONFLICT (scope, key, window_size, window_start)
DO UPDATE SET deferred = rate_limit_counters.deferred + EXCLUDED.deferred, updated_at = now();
