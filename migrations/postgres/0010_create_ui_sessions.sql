-- Dashboard sessions, so a restart does not sign operators out and any instance sharing the
-- store can serve any operator without sticky sessions. Only the SHA-256 of the session id (the
-- cookie value) is stored: a leaked database gives no live cookie. The operator is kept by name
-- and re-resolved from the configuration on each request, so a removed operator or a changed
-- role takes effect at once; `credential` ties the session to the operator's token, so rotating
-- the token ends the operator's sessions. Times are epoch milliseconds.
CREATE TABLE ui_sessions (
    id_hash    TEXT PRIMARY KEY,            -- lower-case hex SHA-256 of the session id
    operator   TEXT NOT NULL,               -- operator user name
    credential TEXT NOT NULL,               -- hex SHA-256 of session id + the operator's token_sha256
    csrf       TEXT NOT NULL,               -- the session's CSRF token (useless without the cookie)
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL              -- idle timeout: moved forward as the operator works
);
CREATE INDEX ui_sessions_expires_at ON ui_sessions (expires_at);
