-- Flow figures per minute, route and dealer ('' when none), counted in the transactions that
-- journal messages and record outcomes: the overview reads at most a day of these rows instead
-- of counting a journal of a million messages. Concurrent PostgreSQL writers spread over
-- `shard` rows (SQLite's single writer always uses 0); readers sum them.
CREATE TABLE flow_stats (
    route            TEXT NOT NULL,
    minute           BIGINT NOT NULL,          -- epoch ms / 60000
    dealer_code      TEXT NOT NULL,
    shard            BIGINT NOT NULL,
    received         BIGINT NOT NULL,          -- messages journaled on the route
    rejected_records BIGINT NOT NULL,          -- of those, refused
    delivered        BIGINT NOT NULL,          -- deliveries that reached delivered
    rejected         BIGINT NOT NULL,          -- deliveries the target refused
    PRIMARY KEY (route, minute, dealer_code, shard)
) WITHOUT ROWID;
CREATE INDEX flow_stats_minute ON flow_stats (minute);

-- Last successful delivery per route and dealer (freshness per dealer); never purged.
CREATE TABLE flow_freshness (
    route        TEXT NOT NULL,
    dealer_code  TEXT NOT NULL,
    shard        BIGINT NOT NULL,
    last_success BIGINT NOT NULL,
    PRIMARY KEY (route, dealer_code, shard)
) WITHOUT ROWID;

-- A store upgraded to this version starts from what its deliveries say about the last day
-- (a delivery's creation stands for its message's arrival) and every dealer's last success.
INSERT INTO flow_stats (route, minute, dealer_code, shard, received, rejected_records, delivered, rejected)
SELECT route, minute, dealer_code, 0, SUM(received), 0, SUM(delivered), SUM(rejected) FROM (
    SELECT route, created_at / 60000 AS minute, COALESCE(dealer_code, '') AS dealer_code,
           1 AS received, 0 AS delivered, 0 AS rejected
    FROM deliveries WHERE created_at >= (SELECT COALESCE(MAX(created_at), 0) - 86400000 FROM deliveries)
    UNION ALL
    SELECT route, updated_at / 60000, COALESCE(dealer_code, ''), 0,
           CASE WHEN status = 'delivered' THEN 1 ELSE 0 END,
           CASE WHEN status = 'rejected' THEN 1 ELSE 0 END
    FROM deliveries WHERE status IN ('delivered', 'rejected')
      AND updated_at >= (SELECT COALESCE(MAX(updated_at), 0) - 86400000 FROM deliveries)
) AS recent
GROUP BY route, minute, dealer_code;

INSERT INTO flow_freshness (route, dealer_code, shard, last_success)
SELECT route, dealer_code, 0, MAX(updated_at) FROM deliveries
WHERE status = 'delivered' AND dealer_code IS NOT NULL
GROUP BY route, dealer_code;
