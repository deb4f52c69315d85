-- Why: 0008 adds the priority CHECK NOT VALID, so adding it takes its ACCESS EXCLUSIVE lock for
-- an instant instead of a scan of the whole table. Validating it here, in a transaction of its
-- own, scans under a SHARE UPDATE EXCLUSIVE lock only: reads and writes of a big live
-- communication_events go on meanwhile. Nothing to do where the CHECK is absent (an adopted
-- app database keeps its text priority and its own CHECK) or already validated.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint
                WHERE conname = 'communication_events_priority_check'
                  AND conrelid = 'communication_events'::regclass AND NOT convalidated) THEN
        ALTER TABLE communication_events VALIDATE CONSTRAINT communication_events_priority_check;
    END IF;
END
$$;
