-- adoption_begin_read_only --
-- First statement of preflight's transaction: nothing it runs can write
SET TRANSACTION READ ONLY;

-- adoption_limit_waits --
-- Preflight never queues behind a migration's lock (it would block others queued behind it)
SELECT set_config('lock_timeout', '2s', true), set_config('statement_timeout', '60s', true);

-- adoption_session --
-- Who and where we are: the backend serving this statement, the server's own port
SELECT pg_backend_pid() AS backend_pid, current_user AS role_name,
       current_database() AS database_name, current_schema() AS schema_name,
       inet_server_port() AS server_port, current_setting('server_version') AS server_version,
       current_setting('application_name') AS application_name;

-- adoption_columns --
-- Columns (with their types) of the named tables in the current schema
SELECT c.relname AS table_name, a.attname AS column_name,
       format_type(a.atttypid, a.atttypmod) AS data_type, t.typtype = 'e' AS is_enum,
       a.attnotnull AS not_null
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_type t ON t.oid = a.atttypid
 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
   AND c.relname = ANY(%(tables)s)
 ORDER BY c.relname, a.attnum;

-- adoption_table_sizes --
-- Estimated rows (the planner's, or the statistics collector's before a first ANALYZE), total
-- size and row-level security of the named tables: catalog and statistics only, no scan
SELECT c.relname AS table_name,
       (CASE WHEN c.reltuples >= 0 THEN c.reltuples ELSE s.n_live_tup END)::bigint
           AS estimated_rows,
       pg_total_relation_size(c.oid) AS total_bytes, c.relrowsecurity AS rls_enabled,
       c.relforcerowsecurity AS rls_forced
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
   AND c.relname = ANY(%(tables)s)
 ORDER BY c.relname;

-- adoption_relation_exists --
-- Whether a relation (name resolved through search_path, or schema-qualified) exists
SELECT to_regclass(%(name)s) IS NOT NULL AS present;

-- adoption_applied_migrations --
-- The migrations mailpipe recorded in this database
SELECT name FROM schema_migrations ORDER BY name;

-- adoption_enum_values --
-- The labels of an enum type, in order
SELECT enumlabel AS value FROM pg_enum WHERE enumtypid = %(type_name)s::regtype
 ORDER BY enumsortorder;

-- adoption_status_counts --
-- Events per status (text, whatever the column's type)
SELECT status::text AS status, count(*) AS events
  FROM communication_events GROUP BY 1 ORDER BY 1;

-- adoption_events_without_template_key --
-- Events with no template_key (mailpipe cannot render them), and those the seed's trigger failed
SELECT count(*) FILTER (WHERE template_key IS NULL) AS without_key,
       count(*) FILTER (WHERE template_key IS NULL AND status::text IN ('queued', 'processing'))
           AS pending_without_key,
       count(*) FILTER (WHERE last_error = 'Missing template_key or event_type')
           AS failed_by_validation
  FROM communication_events;

-- adoption_provider_secrets --
-- Per provider: which secret-like columns hold a value, and whether credentials is not a
-- reference. Only names and booleans leave the database, never a value.
SELECT coalesce(j ->> 'provider_name', j ->> 'name', j ->> 'id') AS provider,
       ARRAY(SELECT k FROM unnest(%(secret_columns)s::text[]) AS k
              WHERE nullif(j ->> k, '') IS NOT NULL) AS columns_with_values,
       (j -> 'credentials') IS NOT NULL AND jsonb_typeof(j -> 'credentials') <> 'null'
           AND NOT (jsonb_typeof(j -> 'credentials') = 'object'
                    AND (j -> 'credentials') - 'secret_block' - 'password_env' = '{}'::jsonb)
           AS credentials_in_clear
  FROM (SELECT to_jsonb(p) AS j FROM smtp_provider_configs p) AS providers
 ORDER BY 1;

-- adoption_policies --
-- Row-level security policies on the named tables; reads_jwt: its expressions look at the
-- request's JWT (is_admin(), auth.uid(), auth.role()), which a database role never carries
SELECT tablename AS table_name, policyname AS policy, cmd AS command, roles::text[] AS roles,
       concat_ws(' ', qual, with_check) ~* '(is_admin|auth\.(uid|role|jwt))\s*\('
           AS reads_jwt
  FROM pg_policies
 WHERE schemaname = current_schema() AND tablename = ANY(%(tables)s)
 ORDER BY tablename, policyname;

-- adoption_roles --
-- The named roles that exist, and whether row-level security applies to them
SELECT rolname AS role_name, rolsuper OR rolbypassrls AS bypasses_rls, rolcanlogin AS can_login
  FROM pg_roles WHERE rolname = ANY(%(roles)s) ORDER BY rolname;

-- adoption_extension_version --
-- The installed version of an extension, or no row
SELECT extversion AS version FROM pg_extension WHERE extname = %(name)s;

-- adoption_cron_jobs --
-- pg_cron's jobs with what their command touches (never the command: it may hold a key)
SELECT j.jobid AS job_id, j.jobname AS job_name, j.schedule, j.active, j.database,
       j.username, j.command ~* 'net\.http_(post|get)' AS calls_http,
       substring(j.command FROM 'https?://([A-Za-z0-9.-]+)') AS http_host,
       j.command ~* 'bearer\s+[A-Za-z0-9._~+/=-]{8,}' AS inline_bearer_token,
       j.command ~* '(email|smtp|communication)' AS touches_email
  FROM cron.job j
 ORDER BY j.jobid;

-- adoption_cron_runs --
-- Per job: runs still starting or running, and the last run's status and start
SELECT j.jobid AS job_id,
       (SELECT count(*) FROM cron.job_run_details d
         WHERE d.jobid = j.jobid AND d.status IN ('starting', 'running')) AS running,
       last.status AS last_status, last.start_time AS last_start
  FROM cron.job j
  LEFT JOIN LATERAL (SELECT d.status, d.start_time FROM cron.job_run_details d
                      WHERE d.jobid = j.jobid ORDER BY d.runid DESC LIMIT 1) AS last ON true
 ORDER BY j.jobid;

-- adoption_net_queue --
-- HTTP calls pg_net has queued but not made yet
SELECT count(*) AS queued FROM net.http_request_queue;

-- adoption_event_writers --
-- Functions whose body (comments left out) inserts into communication_events, whether it names
-- template_key or template_id, and the triggers that call them
SELECT p.oid::regprocedure::text AS function,
       p.prorettype = 'trigger'::regtype AS trigger_function,
       regexp_replace(p.prosrc, '--[^\n]*', '', 'g') ~* 'template_key' AS sets_template_key,
       regexp_replace(p.prosrc, '--[^\n]*', '', 'g') ~* 'template_id' AS sets_template_id,
       p.prosecdef AS security_definer,
       EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) AS c WHERE c LIKE 'search_path=%%')
           AS fixed_search_path,
       ARRAY(SELECT tg.tgname || ' ON ' || tg.tgrelid::regclass::text FROM pg_trigger tg
              WHERE tg.tgfoid = p.oid AND NOT tg.tgisinternal ORDER BY 1) AS triggers
  FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND p.prosrc ~* 'insert\s+into\s+("?public"?\.)?"?communication_events"?([^_a-z0-9]|$)'
 ORDER BY 1;

-- adoption_event_triggers --
-- Triggers on communication_events and what they do (notify, write another table, validate)
SELECT tg.tgname AS trigger_name, tg.tgfoid::regproc::text AS function,
       tg.tgenabled <> 'D' AS enabled, pg_get_triggerdef(tg.oid) AS definition,
       substring(p.prosrc FROM 'pg_notify\(\s*''([^'']+)''') AS notifies,
       p.prosrc ~* 'insert\s+into' AS inserts
  FROM pg_trigger tg
  JOIN pg_proc p ON p.oid = tg.tgfoid
 WHERE tg.tgrelid = to_regclass('communication_events') AND NOT tg.tgisinternal
 ORDER BY tg.tgname;

-- adoption_event_references --
-- Foreign keys pointing at communication_events, with what a delete does to their rows
SELECT conrelid::regclass::text AS table_name, conname AS constraint_name,
       CASE confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT'
                        WHEN 'r' THEN 'RESTRICT' ELSE 'NO ACTION' END AS on_delete
  FROM pg_constraint
 WHERE confrelid = to_regclass('communication_events') AND contype = 'f'
 ORDER BY 1, 2;

-- adoption_schema_fingerprint --
-- A digest of every column, constraint, index, trigger, policy and enum label: equal before and
-- after a command means the command changed no schema
SELECT md5(string_agg(item, E'\n' ORDER BY item)) AS fingerprint, count(*) AS items
  FROM (
      SELECT 'column ' || c.oid::regclass::text || '.' || a.attname || ' '
             || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull::text AS item
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
       WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
         AND c.relkind IN ('r', 'p', 'v')
      UNION ALL
      SELECT 'constraint ' || conrelid::regclass::text || ' ' || pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace NOT IN ('pg_catalog'::regnamespace)
      UNION ALL
      SELECT 'index ' || indexdef FROM pg_indexes
       WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
      UNION ALL
      SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
      UNION ALL
      SELECT 'policy ' || schemaname || '.' || tablename || ' ' || policyname FROM pg_policies
      UNION ALL
      SELECT 'type ' || t.oid::regtype::text || ' ' || e.enumlabel
        FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
  ) AS items;

-- cutover_jobs --
-- The named pg_cron jobs (a name can appear once per owner), oldest first
SELECT jobid AS job_id, jobname AS job_name, active, username
  FROM cron.job WHERE jobname = ANY(%(names)s) ORDER BY jobid;

-- cutover_set_job_active --
-- Pause or resume one pg_cron job (its schedule and command unchanged)
SELECT cron.alter_job(job_id := %(job_id)s, active := %(active)s);

-- cutover_unschedule_job --
-- Remove one pg_cron job (its run history stays in cron.job_run_details)
SELECT cron.unschedule(%(job_id)s::bigint) AS removed;

-- cutover_running_runs --
-- Runs of these jobs that started and have not finished
SELECT count(*) AS running FROM cron.job_run_details
 WHERE jobid = ANY(%(job_ids)s) AND status IN ('starting', 'running');

-- cutover_old_pipeline_processing --
-- Events the old pipeline holds: processing without a mailpipe lease (mailpipe's rows have one)
SELECT count(*) AS events FROM communication_events e
 WHERE status = 'processing' AND to_jsonb(e) ->> 'lease_expires_at' IS NULL;

-- cutover_app_queue_processing --
-- Rows of the app's email_processing_queue an edge function is working on
SELECT count(*) AS rows FROM email_processing_queue WHERE status = 'processing';

-- cutover_mailpipe_processing --
-- Events mailpipe's workers hold under a live lease (its deployments are running)
SELECT count(*) AS events FROM communication_events e
 WHERE status = 'processing'
   AND (to_jsonb(e) ->> 'lease_expires_at')::timestamptz > now();

-- adoption_started --
-- Whether `mailpipe db adopt` has started here (its mapping trigger function exists)
SELECT to_regprocedure('mailpipe_map_app_event()') IS NOT NULL AS started;

-- adoption_provider_plaintext --
-- Providers whose password is in clear (password_encrypted, or credentials that are not a reference), with the values: read only by `provider adopt`, never printed
SELECT provider_name AS provider, nullif(password_encrypted, '') AS password_encrypted,
       CASE WHEN credentials IS NOT NULL
             AND NOT (jsonb_typeof(credentials) = 'object'
                      AND credentials - 'secret_block' - 'password_env' = '{}'::jsonb)
            THEN coalesce(credentials ->> 'password', credentials ->> 'pass') END AS credentials_password,
       CASE WHEN jsonb_typeof(credentials) = 'object'
             AND credentials - 'secret_block' - 'password_env' = '{}'::jsonb
            THEN credentials END AS reference
  FROM smtp_provider_configs
 WHERE nullif(password_encrypted, '') IS NOT NULL
    OR (credentials IS NOT NULL
        AND NOT (jsonb_typeof(credentials) = 'object'
                 AND credentials - 'secret_block' - 'password_env' = '{}'::jsonb))
 ORDER BY provider_name;

-- adoption_set_provider_reference --
-- Store a provider's credentials reference (the password itself is now in a Secret block or an env var)
UPDATE smtp_provider_configs SET credentials = %(reference)s, updated_at = now()
 WHERE provider_name = %(provider)s;

-- adoption_clear_plaintext --
-- Clear password_encrypted of providers whose credentials are a reference (the end of the runbook)
UPDATE smtp_provider_configs SET password_encrypted = NULL, updated_at = now()
 WHERE nullif(password_encrypted, '') IS NOT NULL
   AND jsonb_typeof(credentials) = 'object'
   AND credentials - 'secret_block' - 'password_env' = '{}'::jsonb
   AND credentials <> '{}'::jsonb
RETURNING provider_name;

-- adoption_fix_search_paths --
-- Give mailpipe's functions a fixed search_path (Supabase's function_search_path_mutable lint); event_priority/event_ids keep none so the planner inlines them
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = current_schema()::regnamespace
           AND p.proconfig IS NULL
           AND p.oid::regprocedure::text IN (
               'is_valid_recipient_email(text)', 'quality_worker_is_alive(integer)',
               'app_priority(integer)', 'new_message_id()', 'reserve_send_quota(text,text,text[],integer[],integer)')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, public, pg_temp', fn);
    END LOOP;
END
$$;

-- adoption_checks_view --
-- The data-quality suites' view of the app's outbox (schema mailpipe_checks, first on the suites' search_path): status as text, priority as mailpipe's order, the app's history read through its own columns; rebuilt after every adopt (new columns)
DO $$
DECLARE
    cols text;
BEGIN
    CREATE SCHEMA IF NOT EXISTS mailpipe_checks;
    REVOKE ALL ON SCHEMA mailpipe_checks FROM PUBLIC;
    SELECT string_agg(
               CASE column_name
                   WHEN 'status' THEN 't.status::text AS status'
                   WHEN 'priority' THEN 'event_priority(t.priority) AS priority'
                   -- the app's rows from before adoption: due when created, their provider and
                   -- error in the app's columns
                   WHEN 'scheduled_at' THEN 'coalesce(t.scheduled_at, t.created_at) AS scheduled_at'
                   WHEN 'provider_name' THEN 'coalesce(t.provider_name, t.email_provider) AS provider_name'
                   WHEN 'last_error' THEN 'coalesce(t.last_error, t.error_message) AS last_error'
                   ELSE 't.' || quote_ident(column_name)
               END, ', ' ORDER BY ordinal_position) INTO cols
      FROM information_schema.columns
     WHERE table_schema = 'public' AND table_name = 'communication_events';
    -- security_invoker: the reader's privileges and RLS apply, as on the table. OR REPLACE:
    -- columns a later migration adds come last, as they do in the table.
    EXECUTE format('CREATE OR REPLACE VIEW mailpipe_checks.communication_events '
                   'WITH (security_invoker = true) '
                   'AS SELECT %s FROM public.communication_events AS t', cols);
    COMMENT ON VIEW mailpipe_checks.communication_events IS
        'communication_events as mailpipe''s data-quality suites read it on an adopted app database (status as text, priority 0-9): rebuilt by mailpipe db adopt.';
END
$$;
