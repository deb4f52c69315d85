-- mailpipe: no-transaction
-- Why: brings the app's database (docs/adopting-facts.md), before or after the seed's
-- hardening, to what mailpipe's migrations 0001-0003 would have created, so that those three
-- are recorded as baselined-by-adoption and 0004+ apply normally. Additive only: nothing the
-- app reads is renamed or dropped; its triggers keep firing on the rows mailpipe updates.
--
-- Run by `mailpipe db adopt` one statement at a time in autocommit (no transaction), with
-- lock_timeout set by the runner: each ALTER holds its ACCESS EXCLUSIVE lock for a catalog
-- change only; constraints are added NOT VALID then VALIDATEd (SHARE UPDATE EXCLUSIVE: reads
-- and writes go on); indexes are built CONCURRENTLY; backfills commit every 1000 rows with the
-- app's triggers off for this session only (session_replication_role). Every statement is
-- idempotent, so a run stopped at any point (lock timeout, crash) is finished by running again.

-- ---------------------------------------------------------------- what was there before
-- The first run records the app's schema as it was (columns with their types and defaults,
-- constraints, indexes, triggers and functions with their definitions, tables, casts,
-- policies): `mailpipe db adopt --rollback` takes back exactly what adoption added. Out of
-- Supabase's Data API (own schema, no grant).
CREATE SCHEMA IF NOT EXISTS mailpipe_adoption;
REVOKE ALL ON SCHEMA mailpipe_adoption FROM PUBLIC;
CREATE TABLE IF NOT EXISTS mailpipe_adoption.before (
    kind       text NOT NULL,
    name       text NOT NULL,
    definition text,
    PRIMARY KEY (kind, name)
);
COMMENT ON TABLE mailpipe_adoption.before IS
    'The app''s schema before mailpipe db adopt (recorded once): what mailpipe db adopt --rollback keeps.';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM mailpipe_adoption.before) THEN
        RETURN;  -- a re-run: the first run's record stands
    END IF;
    INSERT INTO mailpipe_adoption.before (kind, name, definition)
    -- ::text: a first branch of type name would cut every later name to 63 bytes
    SELECT 'table'::text, c.relname::text, NULL::text FROM pg_class c
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v')
    UNION ALL
    SELECT 'column', table_name || '.' || column_name, data_type
      FROM information_schema.columns WHERE table_schema = 'public'
    UNION ALL
    SELECT 'default', table_name || '.' || column_name, column_default
      FROM information_schema.columns WHERE table_schema = 'public' AND column_default IS NOT NULL
    UNION ALL
    SELECT 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
      FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND conrelid <> 0
    UNION ALL
    SELECT 'index', c.relname, pg_get_indexdef(c.oid) FROM pg_class c
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'i'
    UNION ALL
    SELECT 'trigger', tgrelid::regclass::text || '.' || tgname, pg_get_triggerdef(oid)
      FROM pg_trigger WHERE NOT tgisinternal
       AND tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace)
    UNION ALL
    SELECT 'function', p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p
     WHERE p.pronamespace = 'public'::regnamespace AND p.prokind = 'f'
    UNION ALL
    SELECT 'cast', castsource::regtype || '->' || casttarget::regtype, NULL FROM pg_cast
     WHERE casttarget IN (SELECT oid FROM pg_type WHERE typnamespace = 'public'::regnamespace)
    UNION ALL
    SELECT 'policy', tablename || '.' || policyname, NULL FROM pg_policies
     WHERE schemaname = 'public';
    -- schema_migrations is mailpipe's (the runner creates it first): never the app's.
    DELETE FROM mailpipe_adoption.before
     WHERE name = 'schema_migrations' OR name LIKE 'schema\_migrations%';
END
$$;

-- ---------------------------------------------------------------- roles
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mailpipe_app') THEN
        CREATE ROLE mailpipe_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mailpipe_analyst') THEN
        CREATE ROLE mailpipe_analyst NOLOGIN;
    END IF;
END
$$;

-- ---------------------------------------------------------------- status: the enum gains mailpipe's values
-- ADD VALUE commits on its own (a new value cannot be used in the transaction that adds it).
DO $$
DECLARE
    enum_type regtype;
BEGIN
    SELECT a.atttypid::regtype INTO enum_type
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = 'communication_events'::regclass AND a.attname = 'status'
       AND t.typtype = 'e';
    IF enum_type IS NOT NULL THEN
        EXECUTE format('ALTER TYPE %s ADD VALUE IF NOT EXISTS %L', enum_type, 'cancelled');
        EXECUTE format('ALTER TYPE %s ADD VALUE IF NOT EXISTS %L', enum_type, 'suppressed');
    END IF;
END
$$;

-- mailpipe writes status from text (SET status = o.status, o from unnest(text[])): let text be
-- assigned to the enum. An assignment cast only: comparisons resolve exactly as before (mailpipe's
-- own queries compare status::text), so the app's queries and its partial indexes are unaffected.
DO $$
DECLARE
    enum_type regtype;
BEGIN
    SELECT a.atttypid::regtype INTO enum_type
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = 'communication_events'::regclass AND a.attname = 'status'
       AND t.typtype = 'e';
    IF enum_type IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_cast WHERE castsource = 'text'::regtype AND casttarget = enum_type) THEN
        EXECUTE format('CREATE CAST (text AS %s) WITH INOUT AS ASSIGNMENT', enum_type);
    END IF;
END
$$;

-- ---------------------------------------------------------------- functions
CREATE OR REPLACE FUNCTION is_valid_recipient_email(address text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT address IS NOT NULL
       AND length(address) <= 254
       AND length(split_part(address, '@', 1)) <= 64
       AND address ~ '^[^][[:space:][:cntrl:]@<>(),;:"\\.]+(\.[^][[:space:][:cntrl:]@<>(),;:"\\.]+)*@([^][[:space:][:cntrl:]@<>(),;:"\\.]+\.)+[^][[:space:][:cntrl:]@<>(),;:"\\.]{2,}$'
$fn$;

CREATE OR REPLACE FUNCTION new_message_id() RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, public, pg_temp
AS $fn$
    SELECT '<' || gen_random_uuid()::text || '@'
        || coalesce(nullif(current_setting('mailpipe.message_id_domain', true), ''), 'mailpipe.local')
        || '>'
$fn$;

-- Priorities: mailpipe claims by an integer 0 (first) to 9; the app stores text classes.
-- event_priority() reads either as mailpipe's order (inlined by the planner: no SET clause);
-- app_priority() writes mailpipe's integer as the app's class. Replace both to change the
-- mapping (then REINDEX idx_communication_events_due).
CREATE OR REPLACE FUNCTION event_priority(priority integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$ SELECT priority $fn$;

CREATE OR REPLACE FUNCTION event_priority(priority text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE pg_catalog.lower(pg_catalog.btrim(priority))
               WHEN 'urgent' THEN 0 WHEN 'high' THEN 2 WHEN 'normal' THEN 5 WHEN 'low' THEN 8
               ELSE CASE WHEN priority OPERATOR(pg_catalog.~) '^[0-9]$' THEN priority::integer ELSE 5 END
           END
$fn$;

CREATE OR REPLACE FUNCTION app_priority(priority integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE WHEN priority <= 1 THEN 'urgent' WHEN priority <= 3 THEN 'high'
                WHEN priority <= 6 THEN 'normal' ELSE 'low' END
$fn$;

-- ---------------------------------------------------------------- communication_events: columns
-- Nullable or constant defaults: a catalog change, no rewrite.
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

ALTER TABLE communication_events ALTER COLUMN message_id SET DEFAULT new_message_id();
ALTER TABLE communication_events ALTER COLUMN scheduled_at SET DEFAULT now();

-- ---------------------------------------------------------------- communication_events: the app's writers
-- Maps what the app's writers (and mailpipe's enqueue) give to what both sides read, before
-- validate_communication_event (triggers fire in name order: mailpipe_... < validate_...):
--   template_key  <- template_id when the writer set none;
--   payload       <- the template data columns named by the setting mailpipe.template_data_columns
--                    (default 'variables,template_variables': merged, later wins), only when the
--                    writer left payload empty: a payload the app wrote is never overwritten;
--   priority      <- mailpipe's integer 0-9 written as the app's class (app_priority);
--   scheduled_at  <- now() when the writer set none (the app's column has no default).
CREATE OR REPLACE FUNCTION mailpipe_map_app_event() RETURNS trigger
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $fn$
DECLARE
    row_data jsonb := to_jsonb(NEW);
    merged   jsonb := '{}'::jsonb;
    col      text;
BEGIN
    IF NEW.template_key IS NULL OR btrim(NEW.template_key) = '' THEN
        NEW.template_key := nullif(btrim(row_data ->> 'template_id'), '');
    END IF;
    IF NEW.payload IS NULL OR NEW.payload = '{}'::jsonb THEN
        FOREACH col IN ARRAY string_to_array(
            coalesce(nullif(current_setting('mailpipe.template_data_columns', true), ''),
                     'variables,template_variables'), ',') LOOP
            IF jsonb_typeof(row_data -> btrim(col)) = 'object' THEN
                merged := merged || (row_data -> btrim(col));
            END IF;
        END LOOP;
        NEW.payload := merged;
    END IF;
    IF pg_typeof(NEW.priority) = 'text'::regtype AND (row_data ->> 'priority') ~ '^-?[0-9]+$' THEN
        NEW.priority := app_priority((row_data ->> 'priority')::integer);
    END IF;
    IF TG_OP = 'INSERT' AND NEW.scheduled_at IS NULL THEN
        NEW.scheduled_at := now();
    END IF;
    RETURN NEW;
END
$fn$;

DROP TRIGGER IF EXISTS mailpipe_map_app_event ON communication_events;
CREATE TRIGGER mailpipe_map_app_event
    BEFORE INSERT OR UPDATE OF template_id, template_key, payload, priority, status
    ON communication_events
    FOR EACH ROW EXECUTE FUNCTION mailpipe_map_app_event();

-- mailpipe's validation (0003's rule, with the app's columns mapped above) replaces the seed's,
-- which failed every event without template_key and fired on every UPDATE: it fires only when
-- a validated column changes, so the app's processor touching its own columns fails nothing.
CREATE OR REPLACE FUNCTION enforce_communication_event_validity() RETURNS trigger
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $fn$
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

DROP TRIGGER IF EXISTS validate_communication_event ON communication_events;
CREATE TRIGGER validate_communication_event
    BEFORE INSERT OR UPDATE OF recipient_email, template_key, event_type, status
    ON communication_events
    FOR EACH ROW EXECUTE FUNCTION enforce_communication_event_validity();

-- ---------------------------------------------------------------- communication_events: backfills
-- In batches of 1000, each committed, the app's triggers off for this session only (they would
-- queue email_processing_queue rows and re-validate every row touched).
SET session_replication_role = replica;

DO $$
DECLARE
    n integer;
BEGIN
    LOOP
        UPDATE communication_events SET message_id = new_message_id()
         WHERE id IN (SELECT id FROM communication_events WHERE message_id IS NULL LIMIT 1000);
        GET DIAGNOSTICS n = ROW_COUNT;
        COMMIT;
        EXIT WHEN n = 0;
    END LOOP;
END
$$;

-- Events still waiting get what mailpipe's claim reads: the key, the data and a due time.
DO $$
DECLARE
    n integer;
BEGIN
    LOOP
        UPDATE communication_events e
           SET template_key = coalesce(nullif(btrim(e.template_key), ''), nullif(btrim(e.template_id), '')),
               payload = CASE WHEN e.payload IS NULL OR e.payload = '{}'::jsonb
                              THEN coalesce(CASE WHEN jsonb_typeof(e.variables) = 'object' THEN e.variables END, '{}'::jsonb)
                                   || coalesce(CASE WHEN jsonb_typeof(e.template_variables) = 'object' THEN e.template_variables END, '{}'::jsonb)
                              ELSE e.payload END,
               scheduled_at = coalesce(e.scheduled_at, e.created_at)
         WHERE e.id IN (SELECT id FROM communication_events
                         WHERE status IN ('queued', 'processing')
                           AND (scheduled_at IS NULL
                                OR ((template_key IS NULL OR btrim(template_key) = '')
                                    AND nullif(btrim(template_id), '') IS NOT NULL)
                                OR (payload IS NULL AND (variables IS NOT NULL OR template_variables IS NOT NULL)))
                         LIMIT 1000);
        GET DIAGNOSTICS n = ROW_COUNT;
        COMMIT;
        EXIT WHEN n = 0;
    END LOOP;
END
$$;

RESET session_replication_role;

-- ---------------------------------------------------------------- communication_events: constraints
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'communication_events'::regclass
                   AND conname = 'communication_events_message_id_not_null') THEN
        ALTER TABLE communication_events ADD CONSTRAINT communication_events_message_id_not_null
            CHECK (message_id IS NOT NULL) NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'communication_events'::regclass
                   AND conname = 'communication_events_error_class_check') THEN
        ALTER TABLE communication_events ADD CONSTRAINT communication_events_error_class_check
            CHECK (error_class IS NULL OR error_class IN (
                'invalid', 'template', 'suppressed', 'rejected', 'bounced', 'retries_exhausted',
                'transient', 'no_provider', 'cancelled')) NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'communication_events'::regclass
                   AND conname = 'communication_events_processing_has_lease') THEN
        -- The app's own processor marks rows processing without a lease: only rows mailpipe
        -- claims (locked_by set) must carry one.
        ALTER TABLE communication_events ADD CONSTRAINT communication_events_processing_has_lease
            CHECK (status <> 'processing' OR locked_by IS NULL OR lease_expires_at IS NOT NULL) NOT VALID;
    END IF;
END
$$;

ALTER TABLE communication_events VALIDATE CONSTRAINT communication_events_message_id_not_null;
ALTER TABLE communication_events VALIDATE CONSTRAINT communication_events_error_class_check;
ALTER TABLE communication_events VALIDATE CONSTRAINT communication_events_processing_has_lease;
-- With the validated CHECK, SET NOT NULL skips its table scan (PostgreSQL 12+).
ALTER TABLE communication_events ALTER COLUMN message_id SET NOT NULL;

-- ---------------------------------------------------------------- communication_events: indexes
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_communication_events_message_id
    ON communication_events (message_id);
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_communication_events_idempotency_key
    ON communication_events (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The claim's order: event_priority() reads the app's text priority as mailpipe's integer.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_communication_events_due
    ON communication_events (event_priority(priority), scheduled_at, id) WHERE status = 'queued';
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_communication_events_lease
    ON communication_events (lease_expires_at) WHERE status = 'processing';
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_communication_events_created_at
    ON communication_events (created_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_communication_events_sent_at
    ON communication_events (sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_communication_events_updated_at
    ON communication_events (updated_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_communication_events_status_priority_retry_scheduled
    ON communication_events (status, priority, retry_count, scheduled_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_communication_events_recipient_email
    ON communication_events (recipient_email);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_communication_events_template_key
    ON communication_events (template_key);
-- Built here so that 0004 and 0005 (applied normally after adoption) find them and skip
-- their plain CREATE INDEX, which would block the app's writes for the length of a build.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_communication_events_queued_scheduled
    ON communication_events (scheduled_at) INCLUDE (retry_count) WHERE status = 'queued';
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_communication_events_failed_updated_at
    ON communication_events (updated_at) WHERE status = 'failed';

-- ---------------------------------------------------------------- smtp_provider_configs
-- mailpipe's default port for writers that give none (the app always gives one).
ALTER TABLE smtp_provider_configs ALTER COLUMN port SET DEFAULT 587;
ALTER TABLE smtp_provider_configs
    ADD COLUMN IF NOT EXISTS provider_name text,
    ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'active',
    ADD COLUMN IF NOT EXISTS suspended_until timestamptz,
    ADD COLUMN IF NOT EXISTS credentials jsonb,
    ADD COLUMN IF NOT EXISTS last_checked timestamptz,
    ADD COLUMN IF NOT EXISTS from_address text,
    ADD COLUMN IF NOT EXISTS tls_mode text NOT NULL DEFAULT 'starttls',
    ADD COLUMN IF NOT EXISTS timeout_seconds real NOT NULL DEFAULT 10,
    ADD COLUMN IF NOT EXISTS max_connections integer NOT NULL DEFAULT 4,
    ADD COLUMN IF NOT EXISTS per_minute_limit integer,
    ADD COLUMN IF NOT EXISTS per_hour_limit integer,
    ADD COLUMN IF NOT EXISTS per_day_limit integer,
    ADD COLUMN IF NOT EXISTS health_score real NOT NULL DEFAULT 100,
    ADD COLUMN IF NOT EXISTS consecutive_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();

-- The seed wrote these two as timestamp without time zone: the values are read as UTC. The
-- table holds a handful of rows, so the rewrite is instant.
DO $$
DECLARE
    col text;
BEGIN
    FOREACH col IN ARRAY ARRAY['suspended_until', 'last_checked'] LOOP
        IF (SELECT data_type FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = 'smtp_provider_configs'
               AND column_name = col) = 'timestamp without time zone' THEN
            EXECUTE format('ALTER TABLE smtp_provider_configs ALTER COLUMN %I TYPE timestamptz '
                           'USING %I AT TIME ZONE ''UTC''', col, col);
        END IF;
    END LOOP;
END
$$;

-- The app names a provider in `name`, mailpipe in `provider_name`: either writer fills both.
CREATE OR REPLACE FUNCTION mailpipe_sync_provider_name() RETURNS trigger
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $fn$
BEGIN
    NEW.provider_name := coalesce(NEW.provider_name, NEW.name);
    NEW.name := coalesce(NEW.name, NEW.provider_name);
    RETURN NEW;
END
$fn$;

DROP TRIGGER IF EXISTS mailpipe_sync_provider_name ON smtp_provider_configs;
CREATE TRIGGER mailpipe_sync_provider_name
    BEFORE INSERT OR UPDATE ON smtp_provider_configs
    FOR EACH ROW EXECUTE FUNCTION mailpipe_sync_provider_name();

-- Providers came from the app's columns: its name, its on/off flag, its limits, and implicit
-- TLS on port 465. Only rows mailpipe never set (provider_name still NULL) are touched.
UPDATE smtp_provider_configs
   SET provider_name = name,
       status = CASE WHEN is_active IS FALSE THEN 'disabled' ELSE status END,
       tls_mode = CASE WHEN port = 465 THEN 'implicit' ELSE tls_mode END,
       per_hour_limit = coalesce(per_hour_limit, hourly_limit),
       per_day_limit = coalesce(per_day_limit, daily_limit),
       consecutive_failures = coalesce(consecutive_failures, 0)
 WHERE provider_name IS NULL OR consecutive_failures IS NULL;

CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_smtp_provider_configs_provider_name
    ON smtp_provider_configs (provider_name);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'smtp_provider_configs'::regclass
                   AND conname = 'smtp_provider_configs_status_check') THEN
        ALTER TABLE smtp_provider_configs ADD CONSTRAINT smtp_provider_configs_status_check
            CHECK (status IN ('active', 'suspended', 'disabled')) NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'smtp_provider_configs'::regclass
                   AND conname = 'smtp_provider_configs_settings_check') THEN
        ALTER TABLE smtp_provider_configs ADD CONSTRAINT smtp_provider_configs_settings_check CHECK (
            tls_mode IN ('implicit', 'starttls', 'none')
            AND port BETWEEN 1 AND 65535
            AND timeout_seconds > 0
            AND max_connections BETWEEN 1 AND 100
            AND coalesce(per_minute_limit, 0) >= 0
            AND coalesce(per_hour_limit, 0) >= 0
            AND coalesce(per_day_limit, 0) >= 0
            AND health_score BETWEEN 0 AND 100
            AND coalesce(consecutive_failures, 0) >= 0
            AND (status <> 'suspended' OR suspended_until IS NOT NULL)) NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'smtp_provider_configs'::regclass
                   AND conname = 'smtp_provider_configs_provider_name_not_null') THEN
        ALTER TABLE smtp_provider_configs ADD CONSTRAINT smtp_provider_configs_provider_name_not_null
            CHECK (provider_name IS NOT NULL) NOT VALID;
    END IF;
END
$$;
ALTER TABLE smtp_provider_configs VALIDATE CONSTRAINT smtp_provider_configs_status_check;
ALTER TABLE smtp_provider_configs VALIDATE CONSTRAINT smtp_provider_configs_settings_check;
ALTER TABLE smtp_provider_configs VALIDATE CONSTRAINT smtp_provider_configs_provider_name_not_null;

-- ---------------------------------------------------------------- smtp_connection_audit
ALTER TABLE smtp_connection_audit
    ADD COLUMN IF NOT EXISTS host text,
    ADD COLUMN IF NOT EXISTS success boolean,
    ADD COLUMN IF NOT EXISTS error_text text,
    ADD COLUMN IF NOT EXISTS ip_address inet,
    ADD COLUMN IF NOT EXISTS result text,
    ADD COLUMN IF NOT EXISTS latency_ms real,
    ADD COLUMN IF NOT EXISTS updated_at timestamptz DEFAULT now();

-- The app's NOT NULL connection_success and its error_message, from mailpipe's probe columns
-- (and the other way for the app's own rows).
CREATE OR REPLACE FUNCTION mailpipe_fill_audit() RETURNS trigger
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $fn$
BEGIN
    NEW.success := coalesce(NEW.success, NEW.connection_success);
    NEW.connection_success := coalesce(NEW.connection_success, NEW.success, NEW.result = 'ok', false);
    NEW.error_text := coalesce(NEW.error_text, NEW.error_message);
    NEW.error_message := coalesce(NEW.error_message, NEW.error_text);
    NEW.connection_attempt_at := coalesce(NEW.connection_attempt_at, now());
    RETURN NEW;
END
$fn$;

DROP TRIGGER IF EXISTS mailpipe_fill_audit ON smtp_connection_audit;
CREATE TRIGGER mailpipe_fill_audit
    BEFORE INSERT ON smtp_connection_audit
    FOR EACH ROW EXECUTE FUNCTION mailpipe_fill_audit();

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'smtp_connection_audit'::regclass
                   AND conname = 'smtp_connection_audit_result_check') THEN
        ALTER TABLE smtp_connection_audit ADD CONSTRAINT smtp_connection_audit_result_check
            CHECK (result IS NULL OR result IN ('ok', 'refused', 'timeout', 'tls_error', 'auth_failed',
                                                'smtp_error', 'dns_error', 'config_error')) NOT VALID;
    END IF;
END
$$;
ALTER TABLE smtp_connection_audit VALIDATE CONSTRAINT smtp_connection_audit_result_check;

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_smtp_connection_audit_attempt
    ON smtp_connection_audit (connection_attempt_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_smtp_connection_audit_provider_attempt
    ON smtp_connection_audit (provider_name, connection_attempt_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_smtp_connection_audit_attempt_result
    ON smtp_connection_audit (connection_attempt_at) INCLUDE (provider_name, result);

-- ---------------------------------------------------------------- smtp_delivery_confirmations
ALTER TABLE smtp_delivery_confirmations
    ADD COLUMN IF NOT EXISTS provider_name text,
    ADD COLUMN IF NOT EXISTS status text DEFAULT 'accepted',
    ADD COLUMN IF NOT EXISTS smtp_response text,
    ADD COLUMN IF NOT EXISTS smtp_code integer,
    ADD COLUMN IF NOT EXISTS may_be_duplicate boolean NOT NULL DEFAULT false;
ALTER TABLE smtp_delivery_confirmations ALTER COLUMN status SET DEFAULT 'accepted';

-- The event reference, typed like communication_events.id (uuid here, bigint on mailpipe's own
-- databases); its foreign key NOT VALID then VALIDATE (a new column: nothing to check).
DO $$
DECLARE
    id_type text;
BEGIN
    SELECT format_type(atttypid, atttypmod) INTO id_type
      FROM pg_attribute WHERE attrelid = 'communication_events'::regclass AND attname = 'id';
    EXECUTE format('ALTER TABLE smtp_delivery_confirmations ADD COLUMN IF NOT EXISTS '
                   'communication_event_id %s', id_type);
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'smtp_delivery_confirmations'::regclass
                   AND conname = 'smtp_delivery_confirmations_communication_event_id_fkey') THEN
        ALTER TABLE smtp_delivery_confirmations
            ADD CONSTRAINT smtp_delivery_confirmations_communication_event_id_fkey
            FOREIGN KEY (communication_event_id) REFERENCES communication_events (id)
            ON DELETE SET NULL NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'smtp_delivery_confirmations'::regclass
                   AND conname = 'smtp_delivery_confirmations_status_check') THEN
        ALTER TABLE smtp_delivery_confirmations ADD CONSTRAINT smtp_delivery_confirmations_status_check
            CHECK (status IN ('accepted', 'delivered', 'bounced', 'complained')) NOT VALID;
    END IF;
END
$$;
ALTER TABLE smtp_delivery_confirmations
    VALIDATE CONSTRAINT smtp_delivery_confirmations_communication_event_id_fkey;
ALTER TABLE smtp_delivery_confirmations VALIDATE CONSTRAINT smtp_delivery_confirmations_status_check;

-- The app's NOT NULL email_id, provider_used and delivery_status from mailpipe's columns, and
-- mailpipe's from the app's, whichever side writes.
CREATE OR REPLACE FUNCTION mailpipe_fill_confirmation() RETURNS trigger
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $fn$
BEGIN
    NEW.email_id := coalesce(NEW.email_id, NEW.communication_event_id::text, NEW.message_id);
    NEW.provider_used := coalesce(NEW.provider_used, NEW.provider_name);
    NEW.provider_name := coalesce(NEW.provider_name, NEW.provider_used);
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
        NEW.delivery_status := CASE NEW.status WHEN 'accepted' THEN 'sent'
                                               WHEN 'delivered' THEN 'delivered'
                                               WHEN 'bounced' THEN 'bounced'
                                               WHEN 'complained' THEN 'complained'
                                               ELSE NEW.delivery_status END;
    END IF;
    NEW.delivery_status := coalesce(NEW.delivery_status, 'sent');
    IF TG_OP = 'INSERT' AND NEW.status IS NULL THEN
        NEW.status := CASE NEW.delivery_status WHEN 'sent' THEN 'accepted'
                                               WHEN 'failed' THEN NULL
                                               ELSE NEW.delivery_status END;
    END IF;
    RETURN NEW;
END
$fn$;

DROP TRIGGER IF EXISTS mailpipe_fill_confirmation ON smtp_delivery_confirmations;
CREATE TRIGGER mailpipe_fill_confirmation
    BEFORE INSERT OR UPDATE ON smtp_delivery_confirmations
    FOR EACH ROW EXECUTE FUNCTION mailpipe_fill_confirmation();

CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_smtp_delivery_confirmations_message_id
    ON smtp_delivery_confirmations (message_id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_smtp_delivery_confirmations_created_at
    ON smtp_delivery_confirmations (created_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_smtp_delivery_confirmations_recipient_created
    ON smtp_delivery_confirmations (recipient_email, created_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_smtp_delivery_confirmations_event
    ON smtp_delivery_confirmations (communication_event_id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_smtp_delivery_confirmations_created_provider
    ON smtp_delivery_confirmations (created_at) INCLUDE (provider_name, status);

-- ---------------------------------------------------------------- rate_limit_counters
-- Before the seed: mailpipe's table. After: the seed's table (serial id, identifier, ...) gains
-- mailpipe's columns and key; the seed's identifier columns are filled from mailpipe's.
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

ALTER TABLE rate_limit_counters
    ADD COLUMN IF NOT EXISTS scope text,
    ADD COLUMN IF NOT EXISTS key text,
    ADD COLUMN IF NOT EXISTS window_size text,
    ADD COLUMN IF NOT EXISTS limit_value integer,
    ADD COLUMN IF NOT EXISTS deferred integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();

DO $$
BEGIN
    IF (SELECT data_type FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = 'rate_limit_counters'
           AND column_name = 'window_start') = 'timestamp without time zone' THEN
        -- Counters of past windows: a small table, values read as UTC.
        ALTER TABLE rate_limit_counters ALTER COLUMN window_start TYPE timestamptz
            USING window_start AT TIME ZONE 'UTC';
    END IF;
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'rate_limit_counters'
                  AND column_name = 'identifier') THEN
        CREATE OR REPLACE FUNCTION mailpipe_fill_rate_limit_counter() RETURNS trigger
        LANGUAGE plpgsql
        SET search_path = public, pg_temp
        AS $fn$
        BEGIN
            NEW.identifier := coalesce(NEW.identifier, NEW.key);
            NEW.identifier_type := coalesce(NEW.identifier_type, NEW.scope);
            RETURN NEW;
        END
        $fn$;
        DROP TRIGGER IF EXISTS mailpipe_fill_rate_limit_counter ON rate_limit_counters;
        CREATE TRIGGER mailpipe_fill_rate_limit_counter
            BEFORE INSERT ON rate_limit_counters
            FOR EACH ROW EXECUTE FUNCTION mailpipe_fill_rate_limit_counter();
    END IF;
END
$$;

CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_rate_limit_counters_window_key
    ON rate_limit_counters (scope, key, window_size, window_start);

CREATE OR REPLACE FUNCTION reserve_send_quota(p_scope text, p_key text, p_windows text[],
                                              p_limits integer[], p_wanted integer)
RETURNS integer
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $fn$
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

-- ---------------------------------------------------------------- mailpipe's own tables (0003)
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

DO $$
DECLARE
    id_type text;
BEGIN
    SELECT format_type(atttypid, atttypmod) INTO id_type
      FROM pg_attribute WHERE attrelid = 'communication_events'::regclass AND attname = 'id';
    EXECUTE format($sql$
        CREATE TABLE IF NOT EXISTS delivery_attempts (
            id                     bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            communication_event_id %s REFERENCES communication_events (id) ON DELETE SET NULL,
            provider_name          text,
            attempted_at           timestamptz NOT NULL DEFAULT now(),
            outcome                text NOT NULL CHECK (outcome IN ('retry', 'failed', 'bounced',
                                                                    'deferred', 'suppressed', 'failover')),
            smtp_code              integer,
            error                  text
        )$sql$, id_type);
END
$$;
CREATE INDEX IF NOT EXISTS idx_delivery_attempts_attempted_at ON delivery_attempts (attempted_at);
CREATE INDEX IF NOT EXISTS idx_delivery_attempts_event ON delivery_attempts (communication_event_id);

-- ---------------------------------------------------------------- privileges and RLS
-- mailpipe's roles get what 0002/0003 give them; the analyst never gets the credential columns
-- (password_encrypted, credentials): RLS cannot hide a column, the grant leaves them out.
GRANT SELECT, INSERT, UPDATE, DELETE ON communication_events, smtp_provider_configs,
    smtp_connection_audit, smtp_delivery_confirmations, rate_limit_counters, email_templates,
    email_suppressions, delivery_attempts TO mailpipe_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO mailpipe_app;
GRANT SELECT ON communication_events, smtp_connection_audit, smtp_delivery_confirmations,
    rate_limit_counters, email_templates, email_suppressions, delivery_attempts TO mailpipe_analyst;

DO $$
DECLARE
    cols text;
BEGIN
    SELECT string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position) INTO cols
      FROM information_schema.columns
     WHERE table_schema = current_schema() AND table_name = 'smtp_provider_configs'
       AND column_name NOT IN ('password_encrypted', 'credentials')
       AND column_name !~* '(password|secret|api_key|token)';
    EXECUTE format('GRANT SELECT (%s) ON smtp_provider_configs TO mailpipe_analyst', cols);
END
$$;

ALTER TABLE email_templates ENABLE ROW LEVEL SECURITY;
ALTER TABLE email_suppressions ENABLE ROW LEVEL SECURITY;
ALTER TABLE delivery_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE rate_limit_counters ENABLE ROW LEVEL SECURITY;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['communication_events', 'smtp_provider_configs', 'smtp_connection_audit',
                             'smtp_delivery_confirmations', 'rate_limit_counters', 'email_templates',
                             'email_suppressions', 'delivery_attempts'] LOOP
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
