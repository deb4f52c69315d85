-- Why: `mailpipe db adopt --rollback`: takes back what adoption (and the migrations applied
-- with it) added to the app's database, from the record adoption's first run made of the app's
-- schema (mailpipe_adoption.before). One transaction: all of it or nothing, under the
-- runner's lock_timeout. What stays: the enum values cancelled and suppressed (Postgres cannot
-- remove them; harmless to the app), the roles mailpipe_app and mailpipe_analyst (cluster-wide;
-- stripped of their grants here), and values adoption filled where the app had left NULL on
-- waiting events (template_key, payload, scheduled_at).

DO $$
DECLARE
    r record;
    current_def text;
BEGIN
    IF to_regclass('mailpipe_adoption.before') IS NULL
       OR NOT EXISTS (SELECT 1 FROM mailpipe_adoption.before) THEN
        RAISE EXCEPTION 'no record of the app''s schema before adoption (mailpipe_adoption.before): '
            'nothing to roll back here';
    END IF;

    DROP SCHEMA IF EXISTS mailpipe_checks CASCADE;

    -- Triggers adoption added (its own) go; changed ones come back below.
    FOR r IN SELECT tgrelid::regclass::text AS tbl, tgname FROM pg_trigger
              WHERE NOT tgisinternal
                AND tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace)
                AND tgrelid::regclass::text || '.' || tgname NOT IN
                    (SELECT name FROM mailpipe_adoption.before WHERE kind = 'trigger') LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, r.tbl);
    END LOOP;

    -- Tables mailpipe created (schema_migrations, email_templates, alerts, ...).
    FOR r IN SELECT c.relname FROM pg_class c
              WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v')
                AND c.relname NOT IN (SELECT name FROM mailpipe_adoption.before WHERE kind = 'table') LOOP
        EXECUTE format('DROP TABLE IF EXISTS public.%I CASCADE', r.relname);
    END LOOP;

    -- Constraints, indexes, then columns adoption added to the app's tables.
    FOR r IN SELECT conrelid::regclass::text AS tbl, conname FROM pg_constraint
              WHERE connamespace = 'public'::regnamespace AND conrelid <> 0
                AND conrelid::regclass::text || '.' || conname NOT IN
                    (SELECT name FROM mailpipe_adoption.before WHERE kind = 'constraint') LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', r.tbl, r.conname);
    END LOOP;
    FOR r IN SELECT c.relname FROM pg_class c
              WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'i'
                AND c.relname NOT IN (SELECT name FROM mailpipe_adoption.before WHERE kind = 'index') LOOP
        EXECUTE format('DROP INDEX IF EXISTS public.%I', r.relname);
    END LOOP;
    FOR r IN SELECT table_name, column_name FROM information_schema.columns
              WHERE table_schema = 'public'
                AND table_name || '.' || column_name NOT IN
                    (SELECT name FROM mailpipe_adoption.before WHERE kind = 'column') LOOP
        EXECUTE format('ALTER TABLE public.%I DROP COLUMN IF EXISTS %I', r.table_name, r.column_name);
    END LOOP;

    -- Types adoption changed (timestamp -> timestamptz, values were read as UTC) and defaults.
    FOR r IN SELECT b.name, b.definition, c.table_name, c.column_name, c.data_type, c.column_default
               FROM mailpipe_adoption.before b
               JOIN information_schema.columns c
                 ON c.table_schema = 'public' AND c.table_name || '.' || c.column_name = b.name
              WHERE b.kind = 'column' LOOP
        IF r.data_type = 'timestamp with time zone' AND r.definition = 'timestamp without time zone' THEN
            EXECUTE format('ALTER TABLE public.%I ALTER COLUMN %I TYPE timestamp USING %I AT TIME ZONE ''UTC''',
                           r.table_name, r.column_name, r.column_name);
        END IF;
        SELECT definition INTO current_def FROM mailpipe_adoption.before
         WHERE kind = 'default' AND name = r.name;
        IF current_def IS NULL AND r.column_default IS NOT NULL THEN
            EXECUTE format('ALTER TABLE public.%I ALTER COLUMN %I DROP DEFAULT', r.table_name, r.column_name);
        ELSIF current_def IS NOT NULL AND current_def IS DISTINCT FROM r.column_default THEN
            EXECUTE format('ALTER TABLE public.%I ALTER COLUMN %I SET DEFAULT %s',
                           r.table_name, r.column_name, current_def);
        END IF;
    END LOOP;

    -- Functions: the app's changed ones (the seed's validator) back as they were; mailpipe's go.
    FOR r IN SELECT name, definition FROM mailpipe_adoption.before WHERE kind = 'function' LOOP
        SELECT pg_get_functiondef(to_regprocedure(r.name)) INTO current_def;
        IF current_def IS DISTINCT FROM r.definition THEN
            EXECUTE r.definition;
        END IF;
    END LOOP;
    FOR r IN SELECT p.oid::regprocedure::text AS name FROM pg_proc p
              WHERE p.pronamespace = 'public'::regnamespace AND p.prokind = 'f'
                AND p.oid::regprocedure::text NOT IN
                    (SELECT name FROM mailpipe_adoption.before WHERE kind = 'function') LOOP
        EXECUTE format('DROP FUNCTION IF EXISTS %s', r.name);
    END LOOP;

    -- Triggers adoption replaced (validate_communication_event), as they were.
    FOR r IN SELECT name, definition FROM mailpipe_adoption.before WHERE kind = 'trigger' LOOP
        SELECT pg_get_triggerdef(t.oid) INTO current_def FROM pg_trigger t
         WHERE NOT t.tgisinternal AND t.tgrelid::regclass::text || '.' || t.tgname = r.name;
        IF current_def IS DISTINCT FROM r.definition THEN
            IF current_def IS NOT NULL THEN
                EXECUTE format('DROP TRIGGER %I ON %s', split_part(r.name, '.', 2),
                               split_part(r.name, '.', 1));
            END IF;
            EXECUTE r.definition;
        END IF;
    END LOOP;

    FOR r IN SELECT castsource::regtype::text AS src, casttarget::regtype::text AS dst FROM pg_cast
              WHERE casttarget IN (SELECT oid FROM pg_type WHERE typnamespace = 'public'::regnamespace)
                AND castsource::regtype || '->' || casttarget::regtype NOT IN
                    (SELECT name FROM mailpipe_adoption.before WHERE kind = 'cast') LOOP
        EXECUTE format('DROP CAST (%s AS %s)', r.src, r.dst);
    END LOOP;

    FOR r IN SELECT tablename, policyname FROM pg_policies
              WHERE schemaname = 'public'
                AND tablename || '.' || policyname NOT IN
                    (SELECT name FROM mailpipe_adoption.before WHERE kind = 'policy') LOOP
        EXECUTE format('DROP POLICY %I ON public.%I', r.policyname, r.tablename);
    END LOOP;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mailpipe_app') THEN
        REVOKE ALL ON ALL TABLES IN SCHEMA public FROM mailpipe_app;
        REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM mailpipe_app;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mailpipe_analyst') THEN
        REVOKE ALL ON ALL TABLES IN SCHEMA public FROM mailpipe_analyst;
    END IF;

    DROP SCHEMA mailpipe_adoption CASCADE;
END
$$;
