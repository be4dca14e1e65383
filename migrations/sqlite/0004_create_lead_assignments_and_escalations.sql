-- Lead distribution and escalation (issue 7 §3, §4).
--
-- lead_assignments: one row per (lead, dealer) the hub gave a lead to. Capacity is counted
-- from it per business day (`day`, in the rules' timezone); the escalation job finds the
-- active assignments past respond_by with no result; a lead never goes to the same dealer
-- twice (unique). Leads falling back to the call centre have no row here.
CREATE TABLE lead_assignments (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    lead_id      TEXT NOT NULL,
    dealer_code  TEXT NOT NULL,
    day          TEXT NOT NULL,             -- business day YYYY-MM-DD the capacity counts against
    level        TEXT,
    score        BIGINT,
    assigned_at  BIGINT NOT NULL,
    respond_by   BIGINT NOT NULL,
    state        TEXT NOT NULL,             -- active | responded | reassigned
    responded_at BIGINT,
    reason       TEXT,
    UNIQUE (lead_id, dealer_code)
);
CREATE INDEX lead_assignments_load ON lead_assignments (day, dealer_code);
CREATE INDEX lead_assignments_due ON lead_assignments (state, respond_by);

-- escalations: work delivered to a dealer with no result in time. `kind` says what kind of
-- work (lead today; campaign tasks can be added), one row per (kind, entity, dealer): the
-- unique key keeps two hub instances running the job at once from raising it twice.
CREATE TABLE escalations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,              -- lead
    entity_id   TEXT NOT NULL,
    dealer_code TEXT NOT NULL,
    due_at      BIGINT NOT NULL,            -- the respond_by that was missed
    raised_at   BIGINT NOT NULL,
    status      TEXT NOT NULL,              -- open | resolved
    action      TEXT NOT NULL,              -- what the hub did when raising it
    resolved_at BIGINT,
    resolution  TEXT,
    UNIQUE (kind, entity_id, dealer_code)
);
CREATE INDEX escalations_status ON escalations (status, id);
CREATE INDEX escalations_dealer ON escalations (dealer_code, id);
