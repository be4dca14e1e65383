-- Mappings run when a delivery is attempted; keep what was actually sent (the mapped body) beside
-- the validated record it came from, for the message detail view and for audits.
ALTER TABLE deliveries ADD COLUMN mapped_body BLOB;
