-- Why: the seed's "SMTP hardening" migration (20250823140729), item by item. It adds the
-- columns the delivery and monitoring jobs need, the rate_limit_counters table, the queue and
-- audit indexes, a validation trigger so that no invalid row is ever silently accepted (it is
-- marked failed with a reason instead, so nothing is lost), RLS with policies, and comments.
-- Every statement is conditional (IF NOT EXISTS / DO blocks) so it is safe on a database where
-- part of it already exists.

-- ---------------------------------------------------------------- smtp_provider_configs
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'smtp_provider_configs'
                     AND column_name = 'provider_name') THEN
        ALTER TABLE smtp_provider_configs ADD COLUMN provider_name text;
        -- Rows from before the hardening get a stable, unique name derived from their id.
        UPDATE smtp_provider_configs SET provider_name = 'provider-' || id WHERE provider_name IS NULL;
        ALTER TABLE smtp_provider_configs ALTER COLUMN provider_name SET NOT NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'smtp_provider_configs'
                     AND column_name = 'status') THEN
        ALTER TABLE smtp_provider_configs ADD COLUMN status text NOT NULL DEFAULT 'active'
            CONSTRAINT smtp_provider_configs_status_check
            CHECK (status IN ('active', 'suspended', 'disabled'));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'smtp_provider_configs'
                     AND column_name = 'suspended_until') THEN
        ALTER TABLE smtp_provider_configs ADD COLUMN suspended_until timestamptz;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'smtp_provider_configs'
                     AND column_name = 'credentials') THEN
        -- A reference to a secret, never the secret: {"secret_block": "name"} (a Prefect
        -- Secret block) or {"password_env": "VAR"} (an environment variable). Any other key,
        -- a plain "password" in particular, is refused by the CHECK.
        ALTER TABLE smtp_provider_configs ADD COLUMN credentials jsonb
            CONSTRAINT smtp_provider_configs_credentials_is_reference
            CHECK (credentials IS NULL
                   OR (jsonb_typeof(credentials) = 'object'
                       AND credentials - 'secret_block' - 'password_env' = '{}'::jsonb));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'smtp_provider_configs'
                     AND column_name = 'last_checked') THEN
        ALTER TABLE smtp_provider_configs ADD COLUMN last_checked timestamptz;
    END IF;
END
$$;

CREATE UNIQUE INDEX IF NOT EXISTS idx_smtp_provider_configs_provider_name
    ON smtp_provider_configs (provider_name);

-- ---------------------------------------------------------------- smtp_connection_audit
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'smtp_connection_audit'
                     AND column_name = 'provider_name') THEN
        ALTER TABLE smtp_connection_audit ADD COLUMN provider_name text;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'smtp_connection_audit'
                     AND column_name = 'connection_attempt_at') THEN
        ALTER TABLE smtp_connection_audit ADD COLUMN connection_attempt_at timestamptz;
        UPDATE smtp_connection_audit SET connection_attempt_at = created_at
         WHERE connection_attempt_at IS NULL;
        ALTER TABLE smtp_connection_audit ALTER COLUMN connection_attempt_at SET DEFAULT now();
        ALTER TABLE smtp_connection_audit ALTER COLUMN connection_attempt_at SET NOT NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'smtp_connection_audit'
                     AND column_name = 'ip_address') THEN
        ALTER TABLE smtp_connection_audit ADD COLUMN ip_address inet;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'smtp_connection_audit'
                     AND column_name = 'result') THEN
        ALTER TABLE smtp_connection_audit ADD COLUMN result text;
        -- Old rows only knew success or not.
        UPDATE smtp_connection_audit
           SET result = CASE WHEN success THEN 'ok' ELSE 'smtp_error' END
         WHERE result IS NULL AND success IS NOT NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'smtp_connection_audit'
                     AND column_name = 'updated_at') THEN
        ALTER TABLE smtp_connection_audit ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
    END IF;
END
$$;

CREATE INDEX IF NOT EXISTS idx_smtp_connection_audit_provider_attempt
    ON smtp_connection_audit (provider_name, connection_attempt_at);

-- ---------------------------------------------------------------- smtp_delivery_confirmations
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'smtp_delivery_confirmations'
                     AND column_name = 'provider_name') THEN
        ALTER TABLE smtp_delivery_confirmations ADD COLUMN provider_name text;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'smtp_delivery_confirmations'
                     AND column_name = 'message_id') THEN
        ALTER TABLE smtp_delivery_confirmations ADD COLUMN message_id text;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'smtp_delivery_confirmations'
                     AND column_name = 'status') THEN
        ALTER TABLE smtp_delivery_confirmations ADD COLUMN status text NOT NULL DEFAULT 'accepted'
            CONSTRAINT smtp_delivery_confirmations_status_check
            CHECK (status IN ('accepted', 'delivered', 'bounced', 'complained'));
    END IF;
END
$$;

CREATE INDEX IF NOT EXISTS idx_smtp_delivery_confirmations_recipient_created
    ON smtp_delivery_confirmations (recipient_email, created_at);

-- ---------------------------------------------------------------- rate_limit_counters
CREATE TABLE IF NOT EXISTS rate_limit_counters (
    scope        text NOT NULL CHECK (scope IN ('provider', 'domain')),
    key          text NOT NULL,
    window_size  text NOT NULL CHECK (window_size IN ('minute', 'hour', 'day')),
    window_start timestamptz NOT NULL,
    count        integer NOT NULL DEFAULT 0 CHECK (count >= 0),
    limit_value  integer CHECK (limit_value IS NULL OR limit_value >= 0),
    deferred     integer NOT NULL DEFAULT 0 CHECK (deferred >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key, window_size, window_start)
);

-- ---------------------------------------------------------------- communication_events indexes
CREATE INDEX IF NOT EXISTS idx_communication_events_status_priority_retry_scheduled
    ON communication_events (status, priority, retry_count, scheduled_at);
CREATE INDEX IF NOT EXISTS idx_communication_events_recipient_email
    ON communication_events (recipient_email);
CREATE INDEX IF NOT EXISTS idx_communication_events_template_key
    ON communication_events (template_key);

-- ---------------------------------------------------------------- validation trigger
-- One address rule, shared by the trigger, the data-quality suites and the tests: a dot-atom
-- local part (no quoted forms), an @, and a dotted domain whose last label has 2+ characters.
-- Non-ASCII letters are allowed on both sides (IDN and SMTPUTF8 mailboxes); whitespace, control
-- characters and the RFC 5322 specials are not, which also closes header injection via CR/LF.
CREATE OR REPLACE FUNCTION is_valid_recipient_email(address text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT address IS NOT NULL
       AND length(address) <= 254
       AND length(split_part(address, '@', 1)) <= 64
       AND address ~ '^[^][[:space:][:cntrl:]@<>(),;:"\\.]+(\.[^][[:space:][:cntrl:]@<>(),;:"\\.]+)*@([^][[:space:][:cntrl:]@<>(),;:"\\.]+\.)+[^][[:space:][:cntrl:]@<>(),;:"\\.]{2,}$'
$fn$;

COMMENT ON FUNCTION is_valid_recipient_email(text) IS
    'The recipient address rule used by validate_communication_event and the data-quality suites.';

CREATE OR REPLACE FUNCTION enforce_communication_event_validity() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Invalid rows are kept and marked failed with a reason (never rejected, never lost),
    -- so the sender can see what was wrong with what it enqueued.
    IF NEW.status IN ('queued', 'processing') THEN
        IF NOT is_valid_recipient_email(NEW.recipient_email) THEN
            NEW.status := 'failed';
            NEW.last_error := 'Invalid recipient_email';
        ELSIF NEW.template_key IS NULL OR btrim(NEW.template_key) = '' THEN
            NEW.status := 'failed';
            NEW.last_error := 'Missing template_key';
        ELSIF NEW.event_type IS NULL OR btrim(NEW.event_type) = '' THEN
            NEW.status := 'failed';
            NEW.last_error := 'Missing event_type';
        END IF;
    END IF;
    RETURN NEW;
END
$fn$;

COMMENT ON FUNCTION enforce_communication_event_validity() IS
    'Marks a queued communication_events row failed (with last_error) when its recipient_email, template_key or event_type is invalid.';

DROP TRIGGER IF EXISTS validate_communication_event ON communication_events;
CREATE TRIGGER validate_communication_event
    BEFORE INSERT OR UPDATE OF recipient_email, template_key, event_type, status
    ON communication_events
    FOR EACH ROW EXECUTE FUNCTION enforce_communication_event_validity();

-- ---------------------------------------------------------------- privileges and RLS
-- The app role sends mail and needs every table; the analyst reads everything except the
-- credentials column. RLS cannot hide a column, so the column is left out of the analyst's grant.
GRANT SELECT, INSERT, UPDATE, DELETE ON communication_events, smtp_provider_configs,
    smtp_connection_audit, smtp_delivery_confirmations, rate_limit_counters TO mailpipe_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO mailpipe_app;
GRANT SELECT ON communication_events, smtp_connection_audit, smtp_delivery_confirmations,
    rate_limit_counters TO mailpipe_analyst;
GRANT SELECT (id, host, port, username, from_address, priority, created_at, provider_name,
              status, suspended_until, last_checked)
    ON smtp_provider_configs TO mailpipe_analyst;

ALTER TABLE communication_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE smtp_provider_configs ENABLE ROW LEVEL SECURITY;
ALTER TABLE smtp_connection_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE smtp_delivery_confirmations ENABLE ROW LEVEL SECURITY;
ALTER TABLE rate_limit_counters ENABLE ROW LEVEL SECURITY;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['communication_events', 'smtp_provider_configs', 'smtp_connection_audit',
                             'smtp_delivery_confirmations', 'rate_limit_counters'] LOOP
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

-- ---------------------------------------------------------------- documentation
COMMENT ON TABLE communication_events IS 'The outbox: one row per email to send. Apps insert rows; process_email_queue delivers them.';
COMMENT ON COLUMN communication_events.status IS 'queued (waiting or scheduled), processing (claimed under a lease), sent, failed (with last_error), cancelled, suppressed.';
COMMENT ON COLUMN communication_events.priority IS 'Lower is sooner: rows are claimed by priority, then scheduled_at.';
COMMENT ON COLUMN communication_events.scheduled_at IS 'Not sent before this time; retries move it forward (backoff).';
COMMENT ON COLUMN communication_events.retry_count IS 'Transient failures so far; failed when it reaches the configured maximum.';
COMMENT ON COLUMN communication_events.last_error IS 'The reason of the last failure, readable by a person.';
COMMENT ON COLUMN communication_events.payload IS 'Template variables (a JSON object).';
COMMENT ON TABLE smtp_provider_configs IS 'SMTP providers mail is sent through, with failover by priority then health.';
COMMENT ON COLUMN smtp_provider_configs.provider_name IS 'Unique name used everywhere (audit, confirmations, rate limits, UI).';
COMMENT ON COLUMN smtp_provider_configs.status IS 'active, suspended (until suspended_until) or disabled (never used nor probed).';
COMMENT ON COLUMN smtp_provider_configs.suspended_until IS 'A suspended provider is skipped until this time, then tried again (half-open).';
COMMENT ON COLUMN smtp_provider_configs.credentials IS 'A reference to the SMTP password: {"secret_block": name} or {"password_env": VAR}. Never the password itself.';
COMMENT ON COLUMN smtp_provider_configs.last_checked IS 'When monitor_smtp_health last probed this provider.';
COMMENT ON TABLE smtp_connection_audit IS 'One row per SMTP connection probe (monitor_smtp_health).';
COMMENT ON COLUMN smtp_connection_audit.result IS 'ok, refused, timeout, tls_error, auth_failed, smtp_error, dns_error, config_error.';
COMMENT ON COLUMN smtp_connection_audit.ip_address IS 'The address actually connected to.';
COMMENT ON TABLE smtp_delivery_confirmations IS 'One row per message accepted by a provider (message_id unique).';
COMMENT ON COLUMN smtp_delivery_confirmations.status IS 'accepted (250 after DATA), later delivered, bounced or complained when feedback arrives.';
COMMENT ON TABLE rate_limit_counters IS 'Sends per provider or recipient domain per window, shared by all workers through atomic upserts; deferred counts events pushed to a later window.';
