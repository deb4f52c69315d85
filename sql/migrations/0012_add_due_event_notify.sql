-- Why: an event waited for the next minute's process_email_queue run (16-57 s in practice).
-- Now the database says when events become due, and `mailpipe deliver` (LISTENing on
-- mailpipe_events_due) sends them at once. The notification comes from a trigger, so rows the
-- application inserts with its own SQL wake the deliverer as well as mailpipe's enqueue.
--
-- One NOTIFY per statement, not per row: a bulk INSERT of 50,000 rows sends one notification,
-- computed with one aggregate over the statement's transition table. The payload is small
-- JSON: how many rows became due now and the best (lowest) priority among them, so a
-- deliverer can wake its priority lane only when it has work. Rows scheduled in the future,
-- retries and rows that become due by the clock send nothing: the deliverer's polling and
-- the every-minute sweeper pick those up. Notifications are delivered at commit, once per
-- distinct payload in a transaction, and dropped when it rolls back.
--
-- UPDATE is covered too (lease rescue, `mailpipe queue retry`, an app moving scheduled_at to
-- now). Postgres allows no column list on an UPDATE trigger with transition tables, nor one
-- trigger with transition tables for two events: hence two triggers on one function.
-- Written for any id and priority type (mailpipe's bigint/integer, an adopted uuid/text: the
-- payload's priority is event_priority's 0-9 order, from 0009).

CREATE OR REPLACE FUNCTION notify_due_communication_events() RETURNS trigger
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $fn$
DECLARE
    due_count bigint;
    best_priority text;
BEGIN
    SELECT count(*), min(event_priority(priority))::text INTO due_count, best_priority
      FROM due_rows
     WHERE status = 'queued' AND scheduled_at <= now();
    IF due_count > 0 THEN
        PERFORM pg_notify('mailpipe_events_due',
                          json_build_object('count', due_count,
                                            'priority', best_priority)::text);
    END IF;
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION notify_due_communication_events() IS
    'Statement trigger: pg_notify(''mailpipe_events_due'', {"count": n, "priority": best}) when the statement left rows queued and due now; woken: mailpipe deliver.';

DROP TRIGGER IF EXISTS notify_due_events_on_insert ON communication_events;
CREATE TRIGGER notify_due_events_on_insert
    AFTER INSERT ON communication_events
    REFERENCING NEW TABLE AS due_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_due_communication_events();

DROP TRIGGER IF EXISTS notify_due_events_on_update ON communication_events;
CREATE TRIGGER notify_due_events_on_update
    AFTER UPDATE ON communication_events
    REFERENCING NEW TABLE AS due_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_due_communication_events();

COMMENT ON TRIGGER notify_due_events_on_insert ON communication_events IS
    'Wakes mailpipe deliver when inserted rows are due now (one NOTIFY per statement).';
COMMENT ON TRIGGER notify_due_events_on_update ON communication_events IS
    'Wakes mailpipe deliver when updated rows are queued and due now (rescue, retry, reschedule).';
