-- forkpool schema, version 1. Applied once at start-up; PRAGMA user_version
-- records which schema files a database has had.
--
-- Times are Unix milliseconds. A future's state: 0 pending, 1 running,
-- 2 finished, 3 failed, 4 cancelled; error_type: 1 task_error, 2 timeout,
-- 3 worker_died. A batch's n_* counters always match its futures' states (they
-- are updated in the same transaction), so reading a batch never counts rows.

CREATE TABLE batches (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	task        TEXT    NOT NULL,
	size        INTEGER NOT NULL,
	chunksize   INTEGER NOT NULL,
	timeout     REAL,
	created_at  INTEGER NOT NULL,
	finished_at INTEGER,
	n_pending   INTEGER NOT NULL,
	n_running   INTEGER NOT NULL DEFAULT 0,
	n_finished  INTEGER NOT NULL DEFAULT 0,
	n_failed    INTEGER NOT NULL DEFAULT 0,
	n_cancelled INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE futures (
	batch_id    INTEGER NOT NULL,
	idx         INTEGER NOT NULL,
	state       INTEGER NOT NULL DEFAULT 0,
	args        TEXT    NOT NULL,
	result      TEXT,
	error_type  INTEGER,
	error       TEXT,
	attempts    INTEGER NOT NULL DEFAULT 0,
	worker      INTEGER,
	started_at  INTEGER,
	finished_at INTEGER,
	done_seq    INTEGER,   -- completion order, unique across the database
	PRIMARY KEY (batch_id, idx)
) WITHOUT ROWID;

-- Dispatch takes a batch's lowest pending indexes; partial indexes are used
-- only by queries that spell out the literal state (state = 0).
CREATE INDEX futures_pending ON futures (batch_id, idx) WHERE state = 0;
-- as_completed order.
CREATE INDEX futures_done ON futures (batch_id, done_seq) WHERE done_seq IS NOT NULL;

-- Counters that must survive restarts (next completion cursor).
CREATE TABLE meta (
	key   TEXT PRIMARY KEY,
	value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('done_seq', 0);
