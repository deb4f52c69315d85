-- Why: an application's plain INSERT with priority 42 or -1 was accepted (no CHECK, the
-- validation trigger ignored priority), the email was sent, and from then on every
-- process_email_queue run failed the communication_events suite's priority_in_range
-- expectation. And one delivery run against a dead provider counted a failure per drainer,
-- so it could suspend the provider on its own.
--
-- Policy (one rule for the schema, the trigger, mailpipe.enqueue and the suite): a priority
-- is 0 (first) to 9. A row that arrives with another one is kept and failed at once with the
-- reason (error_class 'invalid', last_error naming the value given), like every other invalid
-- row, and stores the nearest valid priority, so the table invariant (the CHECK below and the
-- suite's expectation) holds for every row. `mailpipe queue retry` can send it after a fix.

-- On a big live table: give up rather than queue behind a long transaction (and block every
-- writer queued behind this migration); the CHECK is added NOT VALID here and validated by
-- 0013 without blocking writes.
SET LOCAL lock_timeout = '5s';

-- ---------------------------------------------------------------- communication_events
CREATE OR REPLACE FUNCTION enforce_communication_event_validity() RETURNS trigger
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $fn$
DECLARE
    nearest integer;
BEGIN
    -- Invalid rows are kept and marked failed with a reason (never rejected, never lost),
    -- so the sender can see what was wrong with what it enqueued.
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
    -- An adopted app database keeps its text priority (low..urgent, its own CHECK): the rule
    -- is for integer priorities. plpgsql plans a branch only when it runs, so on text the
    -- integer comparisons below are never planned.
    IF pg_typeof(NEW.priority) = 'integer'::regtype THEN
        IF NEW.priority IS NOT NULL AND NEW.priority NOT BETWEEN 0 AND 9 THEN
            nearest := least(greatest(NEW.priority, 0), 9);
            IF NEW.status IN ('queued', 'processing') THEN
                NEW.status := 'failed';
                NEW.last_error := format('Invalid priority %s: use 0 (first) to 9 (stored as %s)',
                                         NEW.priority, nearest);
                NEW.error_class := 'invalid';
            END IF;
            NEW.priority := nearest;
        END IF;
    END IF;
    RETURN NEW;
END
$fn$;

COMMENT ON FUNCTION enforce_communication_event_validity() IS
    'Marks a queued communication_events row failed (last_error, error_class invalid) when its recipient_email, template_key, event_type or priority (0-9) is invalid; an out-of-range priority is stored as the nearest valid one.';

DROP TRIGGER IF EXISTS validate_communication_event ON communication_events;
CREATE TRIGGER validate_communication_event
    BEFORE INSERT OR UPDATE OF recipient_email, template_key, event_type, status, priority
    ON communication_events
    FOR EACH ROW EXECUTE FUNCTION enforce_communication_event_validity();

-- Rows that came in before this migration: the trigger fails the queued ones with the reason
-- and brings every one into range (the suite stops failing on them).
-- (Integer priorities only: an adopted app database keeps its text priority and its own CHECK.)
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute WHERE attrelid = 'communication_events'::regclass
         AND attname = 'priority') = 'integer'::regtype THEN
        UPDATE communication_events
           SET priority = least(greatest(priority, 0), 9), updated_at = now()
         WHERE priority NOT BETWEEN 0 AND 9;

        ALTER TABLE communication_events DROP CONSTRAINT IF EXISTS communication_events_priority_check;
        ALTER TABLE communication_events ADD CONSTRAINT communication_events_priority_check
            CHECK (priority BETWEEN 0 AND 9) NOT VALID;

        COMMENT ON COLUMN communication_events.priority IS 'Lower is sooner, 0 (first) to 9: rows are claimed by priority, then scheduled_at. The trigger fails a row given another value.';
    END IF;
END
$$;

-- ---------------------------------------------------------------- smtp_provider_configs
ALTER TABLE smtp_provider_configs ADD COLUMN IF NOT EXISTS last_failure_run text;

COMMENT ON COLUMN smtp_provider_configs.last_failure_run IS 'The delivery run that last counted a failure against this provider: a run counts at most one, however many drainers or processes it has (health probes always count).';
GRANT SELECT (last_failure_run) ON smtp_provider_configs TO mailpipe_analyst;
