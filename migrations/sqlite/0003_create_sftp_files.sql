-- The SFTP file ledger: one row per (endpoint, content sha256). A live claim (status claimed,
-- lease_until in the future) keeps other hub instances off a file; resume_line is the last line
-- whose batch the journal committed, so a restart resumes after it; an archived row makes an
-- identical re-upload a no-op. Times are epoch milliseconds, like the journal's.
CREATE TABLE sftp_files (
    endpoint      TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    name          TEXT NOT NULL,           -- file name in the polled directory (last seen)
    size          BIGINT NOT NULL,
    mtime         BIGINT NOT NULL,         -- remote mtime, epoch seconds
    status        TEXT NOT NULL,           -- claimed | archived | failed
    resume_line   BIGINT NOT NULL DEFAULT 0,
    rows_read     BIGINT NOT NULL DEFAULT 0,
    rows_accepted BIGINT NOT NULL DEFAULT 0,
    rows_rejected BIGINT NOT NULL DEFAULT 0,
    owner         TEXT NOT NULL,           -- instance holding (or last holding) the claim
    lease_until   BIGINT,                  -- claim expiry; NULL once finished
    claimed_at    BIGINT NOT NULL,
    finished_at   BIGINT,
    archived_to   TEXT,                    -- remote path in archive/ or error/
    reason        TEXT,                    -- why a failed file could not be read
    PRIMARY KEY (endpoint, sha256)
) WITHOUT ROWID;
CREATE INDEX sftp_files_recent ON sftp_files (endpoint, claimed_at);
