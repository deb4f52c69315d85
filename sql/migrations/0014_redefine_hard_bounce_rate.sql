-- Why: since the feedback loop (0010, 0011) a bounce a provider reports after its 250 adds a
-- bounced delivery_attempts row, and hard_bounce_rate divided by sent + hard_bounces: a message
-- accepted and then reported bounced the same day was counted twice in the denominator (once
-- in sent, once in hard_bounces), so the rate read low. The snapshot query now divides by the
-- distinct messages accepted or bounced in the day; these comments say so. Comments only: rows
-- already stored keep their value until their day is computed again (`mailpipe snapshot
-- --from DAY`).

COMMENT ON COLUMN email_health_snapshots.hard_bounces IS
    'delivery_attempts with outcome bounced and attempted_at in the day: 5xx on RCPT at send time (the message was never accepted), and the bounced attempt process_email_feedback adds when a provider reports a hard bounce after accepting the message (error starting "feedback "). Each message bounces at most once.';
COMMENT ON COLUMN email_health_snapshots.hard_bounce_rate IS
    'Fraction 0..1: hard_bounces / (sent + hard_bounces - the day''s hard bounces of messages accepted that same day), i.e. bounces recorded in the day over the distinct messages accepted or bounced in the day. A message accepted and reported bounced the same day counts once (in sent); one accepted on an earlier day and reported bounced today counts in both. Monitoring alerts at 0.05 warning, 0.10 critical. NULL when there is no such message.';
COMMENT ON COLUMN email_health_snapshots.delivery_success_rate IS
    'Fraction 0..1: sent / (sent + failed), the messages accepted by a provider among those that reached a final answer in the day (accepted, or failed for any reason: invalid, suppressed, rejected, bounced at send time, retries exhausted...). A bounce reported after acceptance does not lower it (see hard_bounce_rate and bounced). NULL when both are 0 (nothing finished that day).';
