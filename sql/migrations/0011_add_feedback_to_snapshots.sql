-- Why: the daily snapshot counted "accepted" as the end of the story. With the feedback loop
-- (0009) providers report what happened next; the data team sees it per day and provider next
-- to sent: messages delivered, hard-bounced and complained about, as the providers reported
-- them. Counts only (rates are these over sent, plotted by `mailpipe report` against the SES
-- thresholds). Metadata-only on PostgreSQL 11+: NOT NULL DEFAULT 0 rewrites no row.

ALTER TABLE email_health_snapshots
    ADD COLUMN IF NOT EXISTS delivered  bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS bounced    bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS complained bigint NOT NULL DEFAULT 0;

ALTER TABLE email_health_snapshots
    DROP CONSTRAINT IF EXISTS email_health_snapshots_feedback_counts_check;
ALTER TABLE email_health_snapshots ADD CONSTRAINT email_health_snapshots_feedback_counts_check
    CHECK (delivered >= 0 AND bounced >= 0 AND complained >= 0) NOT VALID;
ALTER TABLE email_health_snapshots VALIDATE CONSTRAINT email_health_snapshots_feedback_counts_check;

-- The day's applied feedback of each kind, read by received_at (its BRIN index, 0009); the
-- snapshot joins each event to its confirmation by confirmation_id (the primary key).

COMMENT ON COLUMN email_health_snapshots.delivered IS
    'Messages a provider reported delivered (the receiving server accepted them): distinct smtp_delivery_confirmations matched by email_feedback_events of kind delivered, applied, with received_at (when the report arrived) in the day; by the confirmation''s provider_name. 0 where the provider reports no deliveries.';
COMMENT ON COLUMN email_health_snapshots.bounced IS
    'Messages a provider accepted and later reported hard-bounced (a webhook or a DSN): distinct confirmations matched by applied email_feedback_events of kind hard_bounce received in the day, by provider. bounced / sent is the bounce rate SES reviews at 5 % and suspends at 10 %.';
COMMENT ON COLUMN email_health_snapshots.complained IS
    'Messages whose recipient marked them as spam (a feedback-loop webhook or an ARF report): distinct confirmations matched by applied email_feedback_events of kind complaint received in the day, by provider. complained / sent is the complaint rate SES reviews at 0.1 % and suspends at 0.5 %.';
COMMENT ON COLUMN email_health_snapshots.hard_bounces IS
    'delivery_attempts with outcome bounced and attempted_at in the day: 5xx on RCPT at send time, and (since 0009) the bounced attempt process_email_feedback adds when a provider reports a hard bounce later (error starting "feedback ").';
