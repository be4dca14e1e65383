-- The audit log: one row per operator action (dashboard or ops API): who did what to which
-- target, when, with the state before and after as JSON text, so headquarters can answer "who
-- replayed this?" without log access. Times are epoch milliseconds, like the journal's.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT NOT NULL,
    username    TEXT NOT NULL,              -- operator user name (or the name tried at a failed login)
    dealer_code TEXT,                       -- the operator's dealer scope; NULL for headquarters
    action      TEXT NOT NULL,              -- replay | retry | park | bulk_retry | bulk_replay | approve | reject | put_customer | login | login_failed | logout
    target      TEXT,                       -- message id, delivery id, approval id, customer id, filter
    before      TEXT,                       -- JSON
    after       TEXT,                       -- JSON
    detail      TEXT,                       -- free text: comment, mapping version, channel (ui/api)
    channel     TEXT NOT NULL               -- ui | api
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_target ON audit_log (target);
