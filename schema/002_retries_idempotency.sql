-- forkpool schema, version 2: retries and idempotent submissions.
--
-- batches.retries: how many more times an item of the batch runs after its
-- worker died or it timed out (futures.attempts counts the runs).
--
-- idempotency: one row per Idempotency-Key a submission came with. The body's
-- SHA-256 tells a retry of the same request (answered with the batch it made)
-- from a different request reusing the key (409). Written in the same
-- transaction as the batch, so a key exists exactly when its batch does.

ALTER TABLE batches ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;

CREATE TABLE idempotency (
	key        TEXT    PRIMARY KEY,
	body_hash  BLOB    NOT NULL,
	batch_id   INTEGER NOT NULL,
	created_at INTEGER NOT NULL
) WITHOUT ROWID;
