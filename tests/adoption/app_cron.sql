-- The seed's four pg_cron jobs, scheduled as its comments show (the bearer key is a fixture
-- value). Needs pg_cron (shared_preload_libraries) and net.http_post (pg_net or net_stub.sql).
SELECT cron.schedule('process_email_queue', '* * * * *', $$
  SELECT net.http_post(
    url := 'https://fixture-project.supabase.co/functions/v1/process-communication-events-enhanced',
    headers := '{"Authorization": "Bearer fixture-service-role-key"}'::jsonb,
    body := '{"action": "process_all_priorities"}'::jsonb
  );
$$);

SELECT cron.schedule('monitor_smtp_health', '*/5 * * * *', $$
  SELECT net.http_post(
    url := 'https://fixture-project.supabase.co/functions/v1/smtp-health-monitor',
    headers := '{"Authorization": "Bearer fixture-service-role-key"}'::jsonb
  );
$$);

SELECT cron.schedule('monitor_email_production', '*/5 * * * *', $$
  SELECT net.http_post(
    url := 'https://fixture-project.supabase.co/functions/v1/email-production-monitor',
    headers := '{"Authorization": "Bearer fixture-service-role-key"}'::jsonb
  );
$$);

-- The seed writes this one as plain SQL into its own email_health_snapshots shape.
SELECT cron.schedule('snapshot_email_health', '0 0 * * *', $$
  INSERT INTO email_health_snapshots (timeframe_hours, total_sent, total_delivered, total_failed,
                                      delivery_rate, failure_rate, healthy_providers)
  SELECT 24,
         COUNT(CASE WHEN status = 'sent' THEN 1 END),
         COUNT(CASE WHEN status = 'delivered' THEN 1 END),
         COUNT(CASE WHEN status = 'failed' THEN 1 END),
         ROUND(COUNT(CASE WHEN status = 'delivered' THEN 1 END) * 100.0 / NULLIF(COUNT(*), 0), 2),
         ROUND(COUNT(CASE WHEN status = 'failed' THEN 1 END) * 100.0 / NULLIF(COUNT(*), 0), 2),
         (SELECT COUNT(*) FROM smtp_provider_configs WHERE is_active AND health_score >= 80)
    FROM communication_events
   WHERE created_at >= NOW() - INTERVAL '24 hours';
$$);
