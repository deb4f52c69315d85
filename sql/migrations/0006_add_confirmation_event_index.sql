-- Why: `mailpipe queue purge` deletes old events in batches, and the foreign key from
-- smtp_delivery_confirmations (ON DELETE SET NULL) then looks up each deleted event's
-- confirmations. Without an index on the referencing column that lookup is a sequential scan
-- per deleted event; with it, a purge batch costs as much as the rows it touches.
-- delivery_attempts already has idx_delivery_attempts_event for the same reason.

CREATE INDEX IF NOT EXISTS idx_smtp_delivery_confirmations_event
    ON smtp_delivery_confirmations (communication_event_id);
