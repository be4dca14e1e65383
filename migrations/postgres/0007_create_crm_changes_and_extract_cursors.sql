-- The CRM change log behind re-pullable extracts (IF-09): one row per written version of a CRM
-- record, appended in the same transaction as the write. `seq` is the extract cursor. A sequence
-- is not commit-ordered (a lower seq can commit after a higher one is visible), so readers only
-- go up to a horizon below every open writer: see src/extract/changes.rs.
CREATE TABLE crm_changes (
    seq        BIGSERIAL PRIMARY KEY,             -- allocation order, NOT commit order (see above)
    entity     TEXT NOT NULL,                      -- customer | vehicle | dealer | lead | ...
    entity_id  TEXT NOT NULL,
    version    BIGINT NOT NULL,
    op         TEXT NOT NULL,                      -- upsert | delete | merge
    data       TEXT NOT NULL,                      -- the record as written (a tombstone: as last seen)
    changed_at BIGINT NOT NULL
);
CREATE INDEX crm_changes_entity ON crm_changes (entity, seq);

-- Records that existed before the log did: one change each, so the first extract has them.
INSERT INTO crm_changes (entity, entity_id, version, op, data, changed_at)
    SELECT entity, id, version, 'upsert', data, updated_at FROM crm_records ORDER BY updated_at, entity, id;

-- Where the nightly push of each entity stands: rows up to `last_cursor` were written and their
-- manifest too. Advanced only after the manifest is on the server.
CREATE TABLE extract_cursors (
    endpoint    TEXT NOT NULL,
    entity      TEXT NOT NULL,
    last_cursor BIGINT NOT NULL,
    last_file   TEXT,
    last_rows   BIGINT,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (endpoint, entity)
);

-- One row per scheduled push tick: the instance that inserts it runs that tick, so hubs sharing
-- one database push once per tick. Also the push history shown to operators.
CREATE TABLE extract_runs (
    endpoint    TEXT NOT NULL,
    tick        BIGINT NOT NULL,                   -- the schedule occurrence (epoch ms)
    owner       TEXT NOT NULL,
    status      TEXT NOT NULL,                     -- running | ok | failed
    detail      TEXT,                              -- JSON: per entity file, rows, cursors or error
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    PRIMARY KEY (endpoint, tick)
);
