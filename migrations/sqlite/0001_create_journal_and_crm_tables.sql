-- The journal (messages, their business keys, deliveries and attempts), the idempotency ledger,
-- and the CRM store. Times are epoch milliseconds (BIGINT) so both stores share one SQL dialect.

CREATE TABLE messages (
    id             TEXT PRIMARY KEY,          -- uuid v7: time-ordered
    parent_id      TEXT,                      -- transport unit of a record; causing message of an event
    kind           TEXT NOT NULL,             -- transport | record | event
    endpoint       TEXT NOT NULL,
    record_type    TEXT,
    routes         TEXT,                      -- comma-separated route ids that matched
    received_at    BIGINT NOT NULL,
    correlation_id TEXT,
    partner        TEXT,                      -- principal scope (osm, dms:D0001, ...)
    dealer_code    TEXT,                      -- for dealer-scoped visibility
    source_ref     TEXT,
    status         TEXT NOT NULL,             -- received | accepted | rejected | duplicate
    reason         TEXT,                      -- JSON array of {field, reason} or text
    entity_id      TEXT,                      -- the business id the hub gave the record
    content_type   TEXT NOT NULL,
    headers        TEXT NOT NULL,
    body           BLOB NOT NULL
);
CREATE INDEX messages_parent ON messages (parent_id);
CREATE INDEX messages_received ON messages (received_at);
CREATE INDEX messages_status ON messages (status, received_at);

CREATE TABLE message_keys (
    value      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (value, kind, message_id)
) WITHOUT ROWID;  -- small rows looked up by key: one B-tree instead of table + index
CREATE INDEX message_keys_message ON message_keys (message_id);

CREATE TABLE idempotency (
    scope      TEXT NOT NULL,                 -- partner scope + record type
    idem_key   TEXT NOT NULL,                 -- source_ref, or sha256 of the record
    message_id TEXT NOT NULL,
    entity_id  TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, idem_key)
) WITHOUT ROWID;

CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- also the order within a lane
    message_id      TEXT NOT NULL,
    route           TEXT NOT NULL,
    target          TEXT NOT NULL,
    lane            TEXT,
    dealer_code     TEXT,
    status          TEXT NOT NULL,           -- pending | in_flight | delivered | rejected | parked
    attempts        BIGINT NOT NULL DEFAULT 0,
    max_attempts    BIGINT NOT NULL,
    backoff_ms      BIGINT NOT NULL,
    max_backoff_ms  BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT,
    mapping         TEXT,
    mapping_version BIGINT,
    content_type    TEXT NOT NULL,
    headers         TEXT NOT NULL,
    body            BLOB NOT NULL,
    last_reason     TEXT,
    remote_ref      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE status = 'in_flight';
CREATE INDEX deliveries_lane_open ON deliveries (target, lane, id) WHERE status IN ('pending','in_flight','parked');
CREATE INDEX deliveries_message ON deliveries (message_id);
CREATE INDEX deliveries_route_status ON deliveries (route, status, updated_at);

CREATE TABLE attempts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id     BIGINT NOT NULL,
    attempt_no      BIGINT NOT NULL,
    started_at      BIGINT NOT NULL,
    duration_ms     BIGINT NOT NULL,
    outcome         TEXT NOT NULL,           -- delivered | retry | reject | parked
    reason          TEXT,
    cause_chain     TEXT NOT NULL,           -- JSON array of strings
    mapping_version BIGINT,
    remote_ref      TEXT
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
) WITHOUT ROWID;

-- CRM store: one row per canonical record. The canonical fields live in `data` (JSON) so every
-- entity shares one upsert/history code path; the columns beside it are what we look up by.
CREATE TABLE crm_records (
    entity         TEXT NOT NULL,            -- customer | vehicle | dealer | lead | lead_result | campaign | campaign_result
    id             TEXT NOT NULL,
    data           TEXT NOT NULL,
    version        BIGINT NOT NULL,
    dealer_code    TEXT,
    mobile         TEXT,
    id_no          TEXT,
    ref            TEXT,                     -- lead id of a result, campaign code of a result, owner of a vehicle
    source_system  TEXT,
    src_updated_at BIGINT,                   -- the source's own updated_at: older updates never overwrite newer
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (entity, id)
);
CREATE INDEX crm_mobile ON crm_records (entity, mobile);
CREATE INDEX crm_id_no ON crm_records (entity, id_no);
CREATE INDEX crm_dealer ON crm_records (entity, dealer_code);
CREATE INDEX crm_ref ON crm_records (entity, ref);

CREATE TABLE change_history (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    entity        TEXT NOT NULL,
    entity_id     TEXT NOT NULL,
    field         TEXT NOT NULL,
    old_value     TEXT,
    new_value     TEXT,
    source_system TEXT,
    message_id    TEXT,
    changed_at    BIGINT NOT NULL
);
CREATE INDEX change_history_entity ON change_history (entity, entity_id, id);

CREATE TABLE approvals (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id   TEXT NOT NULL,
    dealer_code   TEXT,
    field         TEXT NOT NULL,
    old_value     TEXT,
    new_value     TEXT,
    source_system TEXT,
    message_id    TEXT,
    status        TEXT NOT NULL,             -- pending | approved | rejected
    comment       TEXT,
    decided_by    TEXT,
    created_at    BIGINT NOT NULL,
    decided_at    BIGINT
);
CREATE INDEX approvals_status ON approvals (status, id);
