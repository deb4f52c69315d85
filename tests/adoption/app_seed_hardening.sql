-- The seed's "SMTP hardening" migration as it lands on the app's database, condensed (our own
-- restatement of what 20250823140729_….sql does, per docs/adopting-facts.md). Applied on top of
-- app_schema.sql it gives the app AFTER hardening.

ALTER TABLE smtp_provider_configs ADD COLUMN provider_name text;
UPDATE smtp_provider_configs SET provider_name = name WHERE provider_name IS NULL;
ALTER TABLE smtp_provider_configs
    ADD COLUMN status text NOT NULL DEFAULT 'active',
    ADD COLUMN suspended_until timestamp,               -- without time zone, as the seed wrote it
    ADD COLUMN credentials jsonb,                       -- no CHECK: anything goes
    ADD COLUMN last_checked timestamp DEFAULT now();

-- provider_name and connection_attempt_at already exist on the app's table: the seed skips them.
ALTER TABLE smtp_connection_audit
    ADD COLUMN ip_address text,
    ADD COLUMN result text,
    ADD COLUMN updated_at timestamp;

-- message_id already exists: the seed adds the other two.
ALTER TABLE smtp_delivery_confirmations
    ADD COLUMN provider_name text,
    ADD COLUMN status text;

CREATE TABLE IF NOT EXISTS rate_limit_counters (
    id               serial PRIMARY KEY,
    identifier       text NOT NULL,
    identifier_type  text NOT NULL,
    count            integer NOT NULL DEFAULT 0,
    window_start     timestamp NOT NULL DEFAULT now(),
    reputation_score integer NOT NULL DEFAULT 100
);

CREATE INDEX IF NOT EXISTS idx_communication_events_status_priority_retry_scheduled
    ON communication_events (status, priority, retry_count, scheduled_at, created_at);
CREATE INDEX IF NOT EXISTS idx_communication_events_recipient_email
    ON communication_events (recipient_email);
CREATE INDEX IF NOT EXISTS idx_communication_events_template_key
    ON communication_events (template_key);
CREATE INDEX IF NOT EXISTS idx_smtp_connection_audit_provider_attempt
    ON smtp_connection_audit (provider_name, connection_attempt_at);
CREATE INDEX IF NOT EXISTS idx_smtp_delivery_confirmations_recipient_created
    ON smtp_delivery_confirmations (recipient_email, created_at);

-- No search_path, fires on UPDATE too: rows without template_key turn failed whenever touched.
CREATE OR REPLACE FUNCTION enforce_communication_event_validity() RETURNS trigger AS $$
BEGIN
    IF NEW.recipient_email IS NULL
       OR NEW.recipient_email !~* '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$' THEN
        NEW.status := 'failed';
        NEW.last_error := 'Invalid recipient_email';
        RETURN NEW;
    END IF;
    IF NEW.template_key IS NULL OR NEW.event_type IS NULL THEN
        NEW.status := 'failed';
        NEW.last_error := 'Missing template_key or event_type';
        RETURN NEW;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS validate_communication_event ON communication_events;
CREATE TRIGGER validate_communication_event
    BEFORE INSERT OR UPDATE ON communication_events
    FOR EACH ROW EXECUTE FUNCTION enforce_communication_event_validity();

ALTER TABLE rate_limit_counters ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Admins can manage rate limit counters" ON rate_limit_counters
    FOR ALL USING (EXISTS (SELECT 1 FROM profiles
                            WHERE profiles.id = auth.uid() AND profiles.role = 'admin'));
CREATE POLICY "Service roles can manage rate limit counters" ON rate_limit_counters
    FOR ALL USING (auth.role() = 'service_role');
GRANT ALL ON rate_limit_counters TO anon, authenticated, service_role;

COMMENT ON TABLE smtp_provider_configs IS
    'SMTP provider configurations for multi-provider fallback and monitoring';
COMMENT ON TABLE rate_limit_counters IS 'Rate limiting counters for email sending and API usage';

-- Some providers got credentials jsonb filled in clear, as the column invited.
UPDATE smtp_provider_configs
   SET credentials = jsonb_build_object('user', username, 'pass', 'fixture-plaintext-3')
 WHERE name = 'backup-smtp';

-- What the app's processor does next: touch the order events it claims. The seed's trigger
-- marks them failed ('Missing template_key or event_type') since the app sets only template_id.
UPDATE communication_events SET processing_started_at = now()
 WHERE status = 'queued' AND template_id IS NOT NULL;
