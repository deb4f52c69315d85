-- Why: what process_email_queue needs beyond the seed: a Message-ID fixed when a row is created
-- (so every retry carries the same one and duplicates are recognisable), idempotent enqueue,
-- claim leases (so a crashed worker's rows are rescued), the provider's sending settings,
-- versioned templates, a suppression list, and a log of unsuccessful attempts that monitoring
-- and the daily snapshot read.

-- ---------------------------------------------------------------- communication_events
-- The domain part comes from a database setting so operators can use their own domain:
--   ALTER DATABASE ... SET mailpipe.message_id_domain = 'mail.example.com';
CREATE OR REPLACE FUNCTION new_message_id() RETURNS text
LANGUAGE sql VOLATILE AS $fn$
    SELECT '<' || gen_random_uuid()::text || '@'
        || coalesce(nullif(current_setting('mailpipe.message_id_domain', true), ''), 'mailpipe.local')
        || '>'
$fn$;

ALTER TABLE communication_events
    ADD COLUMN IF NOT EXISTS message_id text,
    ADD COLUMN IF NOT EXISTS idempotency_key text,
    ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz,
    ADD COLUMN IF NOT EXISTS locked_by text,
    ADD COLUMN IF NOT EXISTS provider_name text,
    ADD COLUMN IF NOT EXISTS sent_at timestamptz,
    ADD COLUMN IF NOT EXISTS last_attempt_at timestamptz,
    ADD COLUMN IF NOT EXISTS error_class text,
    ADD COLUMN IF NOT EXISTS may_be_duplicate boolean NOT NULL DEFAULT false;

UPDATE communication_events SET message_id = new_message_id() WHERE message_id IS NULL;
ALTER TABLE communication_events ALTER COLUMN message_id SET DEFAULT new_message_id();
ALTER TABLE communication_events ALTER COLUMN message_id SET NOT NULL;

ALTER TABLE communication_events DROP CONSTRAINT IF EXISTS communication_events_status_check;
ALTER TABLE communication_events ADD CONSTRAINT communication_events_status_check
    CHECK (status IN ('queued', 'processing', 'sent', 'failed', 'cancelled', 'suppressed'));
ALTER TABLE communication_events DROP CONSTRAINT IF EXISTS communication_events_error_class_check;
ALTER TABLE communication_events ADD CONSTRAINT communication_events_error_class_check
    CHECK (error_class IS NULL OR error_class IN (
        'invalid', 'template', 'suppressed', 'rejected', 'bounced', 'retries_exhausted',
        'transient', 'no_provider', 'cancelled'));
ALTER TABLE communication_events DROP CONSTRAINT IF EXISTS communication_events_processing_has_lease;
ALTER TABLE communication_events ADD CONSTRAINT communication_events_processing_has_lease
    CHECK (status <> 'processing' OR lease_expires_at IS NOT NULL);

CREATE UNIQUE INDEX IF NOT EXISTS idx_communication_events_message_id
    ON communication_events (message_id);
CREATE UNIQUE INDEX IF NOT EXISTS idx_communication_events_idempotency_key
    ON communication_events (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The claim query's index: only due candidates, in claim order.
CREATE INDEX IF NOT EXISTS idx_communication_events_due
    ON communication_events (priority, scheduled_at, id) WHERE status = 'queued';
-- Lease rescue scans only rows in flight.
CREATE INDEX IF NOT EXISTS idx_communication_events_lease
    ON communication_events (lease_expires_at) WHERE status = 'processing';
CREATE INDEX IF NOT EXISTS idx_communication_events_created_at
    ON communication_events (created_at);
CREATE INDEX IF NOT EXISTS idx_communication_events_sent_at
    ON communication_events (sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_communication_events_updated_at
    ON communication_events (updated_at);

-- The trigger also classifies its failures so reports can group them.
CREATE OR REPLACE FUNCTION enforce_communication_event_validity() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.status IN ('queued', 'processing') THEN
        IF NOT is_valid_recipient_email(NEW.recipient_email) THEN
            NEW.status := 'failed';
            NEW.last_error := 'Invalid recipient_email';
            NEW.error_class := 'invalid';
        ELSIF NEW.template_key IS NULL OR btrim(NEW.template_key) = '' THEN
            NEW.status := 'failed';
            NEW.last_error := 'Missing template_key';
            NEW.error_class := 'invalid';
        ELSIF NEW.event_type IS NULL OR btrim(NEW.event_type) = '' THEN
            NEW.status := 'failed';
            NEW.last_error := 'Missing event_type';
            NEW.error_class := 'invalid';
        END IF;
    END IF;
    RETURN NEW;
END
$fn$;

COMMENT ON COLUMN communication_events.message_id IS 'RFC 5322 Message-ID, fixed at insert and reused on every retry.';
COMMENT ON COLUMN communication_events.idempotency_key IS 'Optional caller key; a second enqueue with the same key returns the first row.';
COMMENT ON COLUMN communication_events.lease_expires_at IS 'While processing: after this time the row is rescued back to queued (crashed worker).';
COMMENT ON COLUMN communication_events.locked_by IS 'The worker (host:pid:run) holding the lease.';
COMMENT ON COLUMN communication_events.provider_name IS 'The provider that accepted the message (sent) or last tried it.';
COMMENT ON COLUMN communication_events.error_class IS 'invalid, template, suppressed, rejected (5xx), bounced (5xx on RCPT), retries_exhausted, transient (last retry reason), no_provider, cancelled.';
COMMENT ON COLUMN communication_events.may_be_duplicate IS 'The connection dropped after DATA: the provider may have accepted a previous attempt with the same Message-ID.';

-- ---------------------------------------------------------------- smtp_provider_configs
ALTER TABLE smtp_provider_configs
    ADD COLUMN IF NOT EXISTS tls_mode text NOT NULL DEFAULT 'starttls',
    ADD COLUMN IF NOT EXISTS timeout_seconds real NOT NULL DEFAULT 10,
    ADD COLUMN IF NOT EXISTS max_connections integer NOT NULL DEFAULT 4,
    ADD COLUMN IF NOT EXISTS per_minute_limit integer,
    ADD COLUMN IF NOT EXISTS per_hour_limit integer,
    ADD COLUMN IF NOT EXISTS per_day_limit integer,
    ADD COLUMN IF NOT EXISTS health_score real NOT NULL DEFAULT 100,
    ADD COLUMN IF NOT EXISTS consecutive_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();

ALTER TABLE smtp_provider_configs DROP CONSTRAINT IF EXISTS smtp_provider_configs_settings_check;
ALTER TABLE smtp_provider_configs ADD CONSTRAINT smtp_provider_configs_settings_check CHECK (
    tls_mode IN ('implicit', 'starttls', 'none')
    AND port BETWEEN 1 AND 65535
    AND timeout_seconds > 0
    AND max_connections BETWEEN 1 AND 100
    AND coalesce(per_minute_limit, 0) >= 0
    AND coalesce(per_hour_limit, 0) >= 0
    AND coalesce(per_day_limit, 0) >= 0
    AND health_score BETWEEN 0 AND 100
    AND consecutive_failures >= 0
    AND (status <> 'suspended' OR suspended_until IS NOT NULL));

COMMENT ON COLUMN smtp_provider_configs.tls_mode IS 'implicit (TLS from the first byte, port 465), starttls (upgrade, port 587) or none (local relays only).';
COMMENT ON COLUMN smtp_provider_configs.max_connections IS 'Persistent SMTP connections a worker opens to this provider.';
COMMENT ON COLUMN smtp_provider_configs.per_minute_limit IS 'Sends allowed per minute across all workers (NULL: no limit). Likewise per hour and per day.';
COMMENT ON COLUMN smtp_provider_configs.health_score IS '0-100, from recent probes, probe latency and delivery outcomes (monitor_smtp_health).';
COMMENT ON COLUMN smtp_provider_configs.consecutive_failures IS 'Connection-level failures in a row; drives suspension backoff.';

GRANT SELECT (tls_mode, timeout_seconds, max_connections, per_minute_limit, per_hour_limit,
              per_day_limit, health_score, consecutive_failures, updated_at)
    ON smtp_provider_configs TO mailpipe_analyst;

-- ---------------------------------------------------------------- smtp_connection_audit / confirmations
ALTER TABLE smtp_connection_audit
    ADD COLUMN IF NOT EXISTS latency_ms real CHECK (latency_ms IS NULL OR latency_ms >= 0);
ALTER TABLE smtp_connection_audit DROP CONSTRAINT IF EXISTS smtp_connection_audit_result_check;
ALTER TABLE smtp_connection_audit ADD CONSTRAINT smtp_connection_audit_result_check
    CHECK (result IS NULL OR result IN ('ok', 'refused', 'timeout', 'tls_error', 'auth_failed',
                                        'smtp_error', 'dns_error', 'config_error'));
COMMENT ON COLUMN smtp_connection_audit.latency_ms IS 'Probe duration from connect to QUIT, milliseconds.';
COMMENT ON COLUMN smtp_connection_audit.error_text IS 'What went wrong, without secrets.';

ALTER TABLE smtp_delivery_confirmations
    ADD COLUMN IF NOT EXISTS smtp_code integer,
    ADD COLUMN IF NOT EXISTS may_be_duplicate boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX IF NOT EXISTS idx_smtp_delivery_confirmations_message_id
    ON smtp_delivery_confirmations (message_id);
CREATE INDEX IF NOT EXISTS idx_smtp_delivery_confirmations_created_at
    ON smtp_delivery_confirmations (created_at);
CREATE INDEX IF NOT EXISTS idx_smtp_connection_audit_attempt
    ON smtp_connection_audit (connection_attempt_at);

-- ---------------------------------------------------------------- email_templates
CREATE TABLE IF NOT EXISTS email_templates (
    id           bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    template_key text NOT NULL CHECK (btrim(template_key) <> ''),
    version      integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    subject      text NOT NULL,
    text_body    text NOT NULL,
    html_body    text,
    from_address text,
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (template_key, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_email_templates_active_key
    ON email_templates (template_key) WHERE active;
COMMENT ON TABLE email_templates IS 'Jinja2 templates (sandboxed, strict undefined). An update adds a version; exactly one version per key is active.';
COMMENT ON COLUMN email_templates.from_address IS 'Overrides the provider''s from address when set.';

-- ---------------------------------------------------------------- email_suppressions
CREATE TABLE IF NOT EXISTS email_suppressions (
    id         bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    address    text NOT NULL CHECK (address = lower(address) AND btrim(address) <> ''),
    kind       text NOT NULL CHECK (kind IN ('address', 'domain')),
    reason     text NOT NULL CHECK (reason IN ('hard_bounce', 'complaint', 'unsubscribe', 'manual')),
    source     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    UNIQUE (address)
);
CREATE INDEX IF NOT EXISTS idx_email_suppressions_created_at ON email_suppressions (created_at);
COMMENT ON TABLE email_suppressions IS 'Addresses (user@example.com) or whole domains (example.com) not to send to, until expires_at (NULL: forever).';

-- ---------------------------------------------------------------- delivery_attempts
CREATE TABLE IF NOT EXISTS delivery_attempts (
    id                     bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    communication_event_id bigint REFERENCES communication_events (id) ON DELETE SET NULL,
    provider_name          text,
    attempted_at           timestamptz NOT NULL DEFAULT now(),
    outcome                text NOT NULL CHECK (outcome IN ('retry', 'failed', 'bounced', 'deferred',
                                                             'suppressed', 'failover')),
    smtp_code              integer,
    error                  text
);
CREATE INDEX IF NOT EXISTS idx_delivery_attempts_attempted_at ON delivery_attempts (attempted_at);
CREATE INDEX IF NOT EXISTS idx_delivery_attempts_event ON delivery_attempts (communication_event_id);
COMMENT ON TABLE delivery_attempts IS 'One row per unsuccessful delivery attempt (successes are smtp_delivery_confirmations): retry (4xx/connection, rescheduled), failed (5xx), bounced (5xx on RCPT), deferred (rate limit), suppressed, failover (provider-level failure, moved to another provider).';

-- ---------------------------------------------------------------- privileges and RLS
GRANT SELECT, INSERT, UPDATE, DELETE ON email_templates, email_suppressions, delivery_attempts
    TO mailpipe_app;
GRANT SELECT ON email_templates, email_suppressions, delivery_attempts TO mailpipe_analyst;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO mailpipe_app;

ALTER TABLE email_templates ENABLE ROW LEVEL SECURITY;
ALTER TABLE email_suppressions ENABLE ROW LEVEL SECURITY;
ALTER TABLE delivery_attempts ENABLE ROW LEVEL SECURITY;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['email_templates', 'email_suppressions', 'delivery_attempts'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE tablename = t AND policyname = t || '_app_all') THEN
            EXECUTE format('CREATE POLICY %I ON %I FOR ALL TO mailpipe_app USING (true) WITH CHECK (true)',
                           t || '_app_all', t);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE tablename = t AND policyname = t || '_analyst_read') THEN
            EXECUTE format('CREATE POLICY %I ON %I FOR SELECT TO mailpipe_analyst USING (true)',
                           t || '_analyst_read', t);
        END IF;
    END LOOP;
END
$$;

-- ---------------------------------------------------------------- send quotas
-- Rate limits shared by every worker: lock the window rows in a fixed order (minute, hour,
-- day: no deadlocks) and grant what every window still allows. Deferrals are counted by the
-- engine (count_deferrals) for the events it really defers: a refusal here may still be
-- sent through another provider.
CREATE OR REPLACE FUNCTION reserve_send_quota(p_scope text, p_key text, p_windows text[],
                                              p_limits integer[], p_wanted integer)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    i       integer;
    n       integer := coalesce(array_length(p_windows, 1), 0);
    starts  timestamptz[];
    granted integer := p_wanted;
    left_   integer;
BEGIN
    FOR i IN 1..n LOOP
        starts[i] := date_trunc(p_windows[i], now());
        INSERT INTO rate_limit_counters (scope, key, window_size, window_start, count, limit_value)
        VALUES (p_scope, p_key, p_windows[i], starts[i], 0, p_limits[i])
        ON CONFLICT DO NOTHING;
        SELECT greatest(p_limits[i] - count, 0) INTO left_
          FROM rate_limit_counters
         WHERE scope = p_scope AND key = p_key AND window_size = p_windows[i]
           AND window_start = starts[i]
           FOR UPDATE;
        granted := least(granted, left_);
    END LOOP;
    FOR i IN 1..n LOOP
        UPDATE rate_limit_counters
           SET count = count + granted,
               limit_value = p_limits[i],
               updated_at = now()
         WHERE scope = p_scope AND key = p_key AND window_size = p_windows[i]
           AND window_start = starts[i];
    END LOOP;
    RETURN granted;
END
$fn$;

COMMENT ON FUNCTION reserve_send_quota(text, text, text[], integer[], integer) IS
    'Take up to p_wanted sends from the given windows of a provider or recipient domain; returns the number granted.';
