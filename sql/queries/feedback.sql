-- store_feedback_event --
-- Store one event verbatim (the common webhook); a known (provider, event id) is a no-op
INSERT INTO email_feedback_events (
    provider, provider_event_id, occurred_at, payload, raw, content_type, verification,
    replay_token, state, kind, provider_kind, recipient, message_id, provider_message_id,
    verp_token, reason, smtp_code, enhanced_status, error, next_attempt_at, processed_at)
VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
        CASE WHEN %s THEN now() END, CASE WHEN %s THEN NULL ELSE now() END)
ON CONFLICT (provider, provider_event_id) DO NOTHING
RETURNING id;

-- store_feedback_events --
-- Store a request's events verbatim in one statement (one array per column); known (provider, event id) pairs are no-ops
INSERT INTO email_feedback_events (
    provider, provider_event_id, occurred_at, payload, raw, content_type, verification,
    replay_token, state, kind, provider_kind, recipient, message_id, provider_message_id,
    verp_token, reason, smtp_code, enhanced_status, error, next_attempt_at, processed_at)
SELECT r.provider, r.provider_event_id, r.occurred_at, r.payload::jsonb, r.raw, r.content_type,
       r.verification, r.replay_token, r.state, r.kind, r.provider_kind, r.recipient,
       r.message_id, r.provider_message_id, r.verp_token, r.reason, r.smtp_code,
       r.enhanced_status, r.error,
       CASE WHEN r.due THEN now() END, CASE WHEN r.due THEN NULL ELSE now() END
  FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::text[], %s::text[],
              %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
              %s::text[], %s::text[], %s::text[], %s::text[], %s::integer[], %s::text[],
              %s::text[], %s::boolean[])
       AS r (provider, provider_event_id, occurred_at, payload, raw, content_type,
             verification, replay_token, state, kind, provider_kind, recipient, message_id,
             provider_message_id, verp_token, reason, smtp_code, enhanced_status, error, due)
ON CONFLICT (provider, provider_event_id) DO NOTHING
RETURNING id;

-- apply_feedback_batch --
-- Claim a batch of due inbox rows (or only one), match each to our message and apply it: confirmation status (never backwards), suppressions, attempt history, state
-- Locks, always in this order, so that concurrent appliers never deadlock: the batch's inbox
-- rows (SKIP LOCKED: never waited for), then its confirmations in id order (locked_targets),
-- then the suppressions in address order (suppressed, gated on status_changes). Two batches
-- about the same messages then queue behind each other instead of each holding what the
-- other waits for.
WITH due AS (
    SELECT id FROM email_feedback_events
     WHERE next_attempt_at <= now()
       AND (%(only_id)s::bigint IS NULL OR id = %(only_id)s::bigint)
     ORDER BY next_attempt_at, id
     LIMIT %(batch_size)s
       FOR UPDATE SKIP LOCKED
), batch AS (
    SELECT f.id, f.provider, f.kind, f.smtp_code, f.reason, f.received_at,
           f.attempts + 1 AS attempts,
           coalesce(p.id, m.id, v.id) AS confirmation_id,
           coalesce(p.communication_event_id, m.communication_event_id,
                    v.communication_event_id) AS matched_event_id,
           coalesce(f.recipient,
                    lower(coalesce(p.recipient_email, m.recipient_email, v.recipient_email)))
               AS recipient
      FROM due
      JOIN email_feedback_events AS f ON f.id = due.id
      -- One lookup per correlation key, each on an index: the provider's id, our Message-ID,
      -- the VERP token (our Message-ID again, encoded in the return path).
      LEFT JOIN LATERAL (
          SELECT c.id, c.communication_event_id, c.recipient_email
            FROM smtp_delivery_confirmations AS c
           WHERE f.provider_message_id IS NOT NULL
             AND c.provider_message_id = f.provider_message_id
           ORDER BY c.id DESC LIMIT 1) AS p ON true
      LEFT JOIN LATERAL (
          SELECT c.id, c.communication_event_id, c.recipient_email
            FROM smtp_delivery_confirmations AS c
           WHERE p.id IS NULL AND f.message_id IS NOT NULL AND c.message_id = f.message_id
           LIMIT 1) AS m ON true
      -- VERP token: <local>=<domain>, or <local> alone for this database's Message-ID domain.
      LEFT JOIN LATERAL (
          SELECT c.id, c.communication_event_id, c.recipient_email
            FROM smtp_delivery_confirmations AS c
           WHERE p.id IS NULL AND m.id IS NULL AND f.verp_token IS NOT NULL
             AND c.message_id = '<' || split_part(f.verp_token, '=', 1) || '@'
                 || coalesce(nullif(split_part(f.verp_token, '=', 2), ''),
                             nullif(current_setting('mailpipe.message_id_domain', true), ''),
                             'mailpipe.local') || '>'
           LIMIT 1) AS v ON true
), target AS (
    -- The strongest status the batch asks for, per confirmation (accepted < delivered <
    -- bounced < complained), and the event that asks for it (the first, on a tie).
    SELECT DISTINCT ON (b.confirmation_id) b.confirmation_id, b.id AS event_id, b.provider,
           b.smtp_code, b.reason,
           CASE b.kind WHEN 'delivered' THEN 'delivered' WHEN 'hard_bounce' THEN 'bounced'
                       WHEN 'complaint' THEN 'complained' END AS status,
           CASE b.kind WHEN 'delivered' THEN 1 WHEN 'hard_bounce' THEN 2
                       WHEN 'complaint' THEN 3 END AS rank
      FROM batch AS b
     WHERE b.confirmation_id IS NOT NULL AND b.kind IN ('delivered', 'hard_bounce', 'complaint')
     ORDER BY b.confirmation_id, rank DESC, b.id
), locked_targets AS (
    -- ORDER BY under FOR UPDATE: rows are sorted, then locked one by one in that order.
    SELECT c.id
      FROM smtp_delivery_confirmations AS c
     WHERE c.id IN (SELECT confirmation_id FROM target)
     ORDER BY c.id
       FOR UPDATE OF c
), status_changes AS (
    UPDATE smtp_delivery_confirmations AS c
       SET status = t.status
      FROM target AS t
     WHERE c.id = t.confirmation_id
       -- A condition without columns runs once, before the first row is updated: every
       -- confirmation is locked (in id order) before this UPDATE touches any.
       AND (SELECT count(*) FROM locked_targets) >= 0
       AND t.rank > CASE c.status WHEN 'accepted' THEN 0 WHEN 'delivered' THEN 1
                                  WHEN 'bounced' THEN 2 ELSE 3 END
    RETURNING c.id, c.status, c.communication_event_id, c.provider_name, t.event_id,
              t.provider, t.smtp_code, t.reason
), soft_counts AS (
    -- Soft bounces of each recipient in the window: applied ones plus this batch's.
    SELECT f.recipient, count(*) AS n
      FROM email_feedback_events AS f
     WHERE f.kind = 'soft_bounce'
       AND f.recipient = ANY(SELECT b.recipient FROM batch AS b
                              WHERE b.kind = 'soft_bounce' AND b.confirmation_id IS NOT NULL)
       AND f.received_at > now() - make_interval(secs => %(soft_window_seconds)s)
       AND (f.state = 'applied'
            OR f.id = ANY(SELECT b.id FROM batch AS b
                           WHERE b.kind = 'soft_bounce' AND b.confirmation_id IS NOT NULL))
     GROUP BY f.recipient
), wanted AS (
    -- One suppression per address, the strongest reason first.
    SELECT DISTINCT ON (w.address) w.address, w.reason, w.source, w.expires_at
      FROM (
          SELECT b.recipient AS address,
                 CASE b.kind WHEN 'complaint' THEN 'complaint' WHEN 'hard_bounce' THEN 'hard_bounce'
                             ELSE 'unsubscribe' END AS reason,
                 CASE b.kind WHEN 'complaint' THEN 1 WHEN 'hard_bounce' THEN 2 ELSE 3 END AS rank,
                 'feedback ' || b.provider AS source, NULL::timestamptz AS expires_at
            FROM batch AS b
           WHERE b.confirmation_id IS NOT NULL
             AND b.kind IN ('complaint', 'hard_bounce', 'unsubscribe')
          UNION ALL
          SELECT s.recipient, 'soft_bounce', 4,
                 'feedback: ' || s.n || ' soft bounces in ' || %(soft_window_label)s,
                 now() + make_interval(secs => %(soft_suppression_seconds)s)
            FROM soft_counts AS s
           WHERE s.n >= %(soft_threshold)s
      ) AS w
     WHERE w.address LIKE '_%%@_%%' AND w.address = lower(w.address)
       -- Suppressions only once the confirmations are done (and so locked): see the top.
       AND (SELECT count(*) FROM status_changes) >= 0
     ORDER BY w.address, w.rank
), suppressed AS (
    -- In address order: two appliers wanting the same addresses take them in the same order.
    INSERT INTO email_suppressions AS s (address, kind, reason, source, expires_at)
    SELECT address, 'address', reason, source, expires_at FROM wanted ORDER BY address
    ON CONFLICT (address) DO UPDATE
       SET reason = EXCLUDED.reason, source = EXCLUDED.source, created_at = now(),
           expires_at = EXCLUDED.expires_at
     -- An entry is replaced only when it no longer holds or the new one lasts longer; a
     -- standing suppression (manual, or forever) is kept as it is.
     WHERE s.expires_at IS NOT NULL
       AND (s.expires_at <= now() OR EXCLUDED.expires_at IS NULL
            OR EXCLUDED.expires_at > s.expires_at)
    RETURNING s.address, s.reason
), attempts AS (
    -- History: a hard bounce that bounced a confirmation is a bounced delivery attempt (the
    -- snapshot's hard_bounces counts it like a 5xx on RCPT). Monitoring's bounce rate counts
    -- the message by its confirmation's status instead and skips these rows by their
    -- 'feedback ' prefix (metrics_delivery_by_provider): one bounce, counted once.
    INSERT INTO delivery_attempts (communication_event_id, provider_name, outcome, smtp_code, error)
    SELECT sc.communication_event_id, sc.provider_name, 'bounced', sc.smtp_code,
           left('feedback ' || sc.provider || coalesce(': ' || sc.reason, ''), 500)
      FROM status_changes AS sc
     WHERE sc.status = 'bounced'
    RETURNING communication_event_id
), effects AS (
    -- What each event changed (hash joins, not per-row lookups: batches are thousands).
    SELECT b.id, array_remove(ARRAY[
               CASE WHEN sc.status IS NOT NULL THEN 'status:' || sc.status END,
               CASE WHEN x.reason = CASE b.kind WHEN 'complaint' THEN 'complaint'
                                                WHEN 'hard_bounce' THEN 'hard_bounce'
                                                WHEN 'unsubscribe' THEN 'unsubscribe'
                                                WHEN 'soft_bounce' THEN 'soft_bounce' END
                    THEN 'suppressed:' || x.reason END,
               CASE WHEN sc.status = 'bounced' THEN 'attempt:bounced' END
           ], NULL) AS effect
      FROM batch AS b
      LEFT JOIN status_changes AS sc ON sc.event_id = b.id
      LEFT JOIN suppressed AS x ON b.confirmation_id IS NOT NULL AND x.address = b.recipient
), marked AS (
    UPDATE email_feedback_events AS f
       SET attempts = b.attempts,
           confirmation_id = b.confirmation_id,
           matched_event_id = b.matched_event_id,
           recipient = b.recipient,
           state = CASE WHEN b.confirmation_id IS NOT NULL THEN 'applied' ELSE 'unmatched' END,
           error = NULL,
           effect = e.effect,
           -- Unmatched: its confirmation may not be recorded yet; look again with backoff
           -- until the retry window is over, then keep it as unmatched for good.
           next_attempt_at = CASE
               WHEN b.confirmation_id IS NOT NULL THEN NULL
               WHEN b.received_at < now() - make_interval(secs => %(unmatched_seconds)s) THEN NULL
               ELSE now() + make_interval(secs => least(60 * power(2, b.attempts - 1), 900))
           END,
           processed_at = CASE
               WHEN b.confirmation_id IS NOT NULL
                 OR b.received_at < now() - make_interval(secs => %(unmatched_seconds)s)
               THEN now() END
      FROM batch AS b
      JOIN effects AS e ON e.id = b.id
     WHERE f.id = b.id
    RETURNING f.state
)
SELECT (SELECT count(*) FROM marked) AS claimed,
       (SELECT count(*) FROM marked WHERE state = 'applied') AS applied,
       (SELECT count(*) FROM marked WHERE state = 'unmatched') AS unmatched,
       (SELECT count(*) FROM status_changes) AS status_changes,
       (SELECT count(*) FROM suppressed) AS suppressions,
       (SELECT count(*) FROM attempts) AS attempts;

-- mark_feedback_error --
-- Keep an event whose processing failed with its error; retried with backoff until max attempts
UPDATE email_feedback_events
   SET state = 'error',
       attempts = attempts + 1,
       error = %(error)s,
       next_attempt_at = CASE WHEN attempts + 1 >= %(max_attempts)s THEN NULL
                              ELSE now() + make_interval(secs => least(60 * power(2, attempts), 3600))
                         END,
       processed_at = CASE WHEN attempts + 1 >= %(max_attempts)s THEN now() END
 WHERE id = %(id)s;

-- list_feedback_events --
-- Inbox rows, newest first, optionally of some states
SELECT id, provider, provider_event_id, received_at, occurred_at, state, kind, provider_kind,
       recipient, message_id, provider_message_id, verification, attempts, error, effect,
       matched_event_id, confirmation_id, reason
  FROM email_feedback_events
 WHERE (%(states)s::text[] IS NULL OR state = ANY(%(states)s::text[]))
 ORDER BY id DESC
 LIMIT %(limit)s;

-- feedback_state_counts --
-- How many inbox rows are in each state
SELECT state, count(*) AS n FROM email_feedback_events GROUP BY state ORDER BY state;

-- feedback_backlog --
-- What waits in the inbox after a run: due now, unmatched (still retried or kept for good), failed, and the oldest due event's age
SELECT count(*) FILTER (WHERE next_attempt_at <= now()) AS due,
       count(*) FILTER (WHERE state = 'unmatched' AND next_attempt_at IS NOT NULL) AS unmatched_retrying,
       count(*) FILTER (WHERE state = 'unmatched' AND next_attempt_at IS NULL) AS unmatched_kept,
       count(*) FILTER (WHERE state = 'error') AS errors,
       coalesce(extract(epoch FROM now() - min(received_at) FILTER (WHERE next_attempt_at <= now())), 0)::float AS oldest_due_seconds
  FROM email_feedback_events
 WHERE state IN ('received', 'unmatched', 'error');

-- feedback_of_messages --
-- The latest applied feedback of each of these messages (by our Message-ID), with how many events it had, for mailpipe queue list
SELECT DISTINCT ON (c.message_id) c.message_id, c.status AS confirmation_status,
       f.kind AS feedback, f.received_at AS feedback_at, f.provider AS feedback_provider,
       count(*) OVER (PARTITION BY c.message_id) AS feedback_events
  FROM smtp_delivery_confirmations AS c
  JOIN email_feedback_events AS f
    ON f.matched_event_id = c.communication_event_id AND f.state = 'applied'
 WHERE c.message_id = ANY(%(message_ids)s::text[])
 ORDER BY c.message_id, f.received_at DESC, f.id DESC;

-- feedback_event_detail --
-- One outbox event with its confirmation (the id is compared as the database's own id type: bigint or uuid)
SELECT e.id, e.status, e.priority, e.recipient_email, e.template_key, e.event_type,
       e.retry_count, e.created_at, e.scheduled_at, e.sent_at, e.updated_at, e.provider_name,
       e.error_class, e.last_error, e.message_id,
       c.status AS confirmation_status, c.smtp_code, c.smtp_response, c.provider_message_id,
       c.created_at AS accepted_at
  FROM communication_events AS e
  LEFT JOIN smtp_delivery_confirmations AS c ON c.message_id = e.message_id
 WHERE e.id = %(id)s;

-- feedback_of_event --
-- Every feedback event matched to one outbox event, oldest first (its history after the 250)
SELECT id, provider, kind, provider_kind, state, received_at, occurred_at, reason, smtp_code,
       enhanced_status, effect
  FROM email_feedback_events
 WHERE matched_event_id = %(id)s
 ORDER BY received_at, id;
