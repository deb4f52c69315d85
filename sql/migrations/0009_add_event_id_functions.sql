-- Why: mailpipe runs on its own databases (bigint ids, integer priority 0-9) and on an adopted
-- app database (uuid ids, text priority low/normal/high/urgent; see sql/adoption/). Queries stay
-- the same on both by going through two functions:
--   event_ids(text[])      the ids a command or a batch names, as communication_events.id's type
--                          (ids travel as text: any id type has a text form);
--   event_priority(x)      a priority as mailpipe's order, 0 (first) to 9, from an integer or
--                          the app's text class.
-- Both are plain IMMUTABLE SQL (no SET clause) so the planner inlines them: on mailpipe's own
-- databases the claim's ORDER BY event_priority(priority) is ORDER BY priority, served by
-- idx_communication_events_due as before.

CREATE OR REPLACE FUNCTION event_priority(priority integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$ SELECT priority $fn$;

CREATE OR REPLACE FUNCTION event_priority(priority text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE pg_catalog.lower(pg_catalog.btrim(priority))
               WHEN 'urgent' THEN 0 WHEN 'high' THEN 2 WHEN 'normal' THEN 5 WHEN 'low' THEN 8
               ELSE CASE WHEN priority OPERATOR(pg_catalog.~) '^[0-9]$' THEN priority::integer ELSE 5 END
           END
$fn$;

COMMENT ON FUNCTION event_priority(integer) IS 'mailpipe''s claim order of a priority (0 first, 9 last): an integer priority is its own order.';
COMMENT ON FUNCTION event_priority(text) IS 'mailpipe''s claim order of the app''s text priority: urgent 0, high 2, normal 5, low 8 (a digit is read as itself, anything else as 5).';

DO $$
DECLARE
    id_type text;
BEGIN
    SELECT format_type(atttypid, atttypmod) INTO id_type
      FROM pg_attribute WHERE attrelid = 'communication_events'::regclass AND attname = 'id';
    EXECUTE format('CREATE OR REPLACE FUNCTION event_ids(ids text[]) RETURNS %s[] '
                   'LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$ SELECT ids::%s[] $fn$',
                   id_type, id_type);
    EXECUTE format('COMMENT ON FUNCTION event_ids(text[]) IS %L',
                   'Event ids given as text, as communication_events.id''s type (' || id_type || ').');
END
$$;
