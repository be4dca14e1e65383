-- One row per scheduled job tick an instance ran (SFTP polls, payload purge, escalation), so
-- instances sharing the store run each tick once.
CREATE TABLE schedule_ticks (
    job        TEXT NOT NULL,
    tick       BIGINT NOT NULL,            -- the cron occurrence, epoch ms
    owner      TEXT NOT NULL,              -- host/pid/random of the instance that ran it
    claimed_at BIGINT NOT NULL,
    PRIMARY KEY (job, tick)
);
