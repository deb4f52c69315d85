-- The seed's "Testing Commands" (smtp_hardening_test_plan.md), run by `mailpipe db verify`
-- and by tests/test_seed_plan.py. The trigger check runs inside a transaction that is rolled back.

-- tables_have_required_columns --
-- Check that tables exist with required columns
SELECT table_name, column_name, data_type
FROM information_schema.columns
WHERE table_name IN ('smtp_provider_configs', 'smtp_connection_audit', 'smtp_delivery_confirmations', 'rate_limit_counters')
  AND table_schema = current_schema()
ORDER BY table_name, ordinal_position;

-- indexes_exist --
-- Check that indexes were created
SELECT indexname, tablename
FROM pg_indexes
WHERE tablename IN ('communication_events', 'smtp_connection_audit', 'smtp_delivery_confirmations')
  AND schemaname = current_schema()
  AND indexname LIKE 'idx_%'
ORDER BY tablename, indexname;

-- trigger_exists --
-- Check that trigger exists
SELECT trigger_name, event_manipulation, event_object_table
FROM information_schema.triggers
WHERE trigger_name = 'validate_communication_event'
ORDER BY event_manipulation;

-- trigger_marks_invalid_email_failed --
-- Test trigger function: should set status to 'failed' and last_error to 'Invalid recipient_email'
INSERT INTO communication_events (event_type, recipient_email, template_key)
VALUES ('test', 'invalid-email', 'test_template')
RETURNING id, status, last_error;
