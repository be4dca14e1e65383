-- Due deliveries by target: the dispatcher claims target by target, so a long backlog of one
-- target (a million CRM rows after an import) costs nothing when claiming for another.
CREATE INDEX deliveries_due_target ON deliveries (target, next_attempt_at, id) WHERE status = 'pending';
