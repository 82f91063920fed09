-- forkpool schema, version 4: fewer B-tree pages written per commit.
--
-- Every B-tree a transaction changes costs at least one page in the WAL, and
-- a single-item call (a submission, then its result) changed five in each of
-- its two commits (strace: 10 frames, 20 pwrite calls a call). Three of them
-- were bookkeeping rather than data:
--   - batches' AUTOINCREMENT updated sqlite_sequence on every submission;
--   - segments, a rowid table with a (batch_id, seg) primary key, kept that
--     key in an index of its own, a second B-tree per insert;
--   - meta's done_seq was rewritten by every commit with a result.
-- Now a submission writes batches, segments and seg_args, and a result
-- batches, segments, outcomes and its key's index: 3 and 4 pages.
--
-- outcomes keeps its rowid and key index. WITHOUT ROWID would save that
-- index's page too, but a 256-record group (about 10 KB) then keeps less of
-- itself in the leaf and spills into one more overflow page: W1 (1,000,000
-- items) took 15% more server CPU and 15% more bytes per item.

-- Batch ids without AUTOINCREMENT. An id is never given twice all the same:
-- the server inserts max(the largest id, meta's next_batch_id - 1) + 1, and
-- deleting batches (retention) raises next_batch_id past the deleted ids.
CREATE TABLE batches4 (
	id          INTEGER PRIMARY KEY,
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
	n_cancelled INTEGER NOT NULL DEFAULT 0,
	retries     INTEGER NOT NULL DEFAULT 0
);
INSERT INTO batches4 SELECT id, task, size, chunksize, timeout, created_at, finished_at, n_pending,
	n_running, n_finished, n_failed, n_cancelled, retries FROM batches;
INSERT INTO meta (key, value)
	SELECT 'next_batch_id', seq + 1 FROM sqlite_sequence WHERE name = 'batches';
DROP TABLE batches;
ALTER TABLE batches4 RENAME TO batches;

-- segments keyed by their rowid: id = batch_id << 22 | seg (a batch has at
-- most 10^9 items, fewer than 2^22 segments of 256). batch_id and seg are
-- virtual columns, for reading; the server's queries use id ranges.
CREATE TABLE segments4 (
	id       INTEGER PRIMARY KEY,
	items    BLOB    NOT NULL,
	batch_id INTEGER GENERATED ALWAYS AS (id >> 22) VIRTUAL,
	seg      INTEGER GENERATED ALWAYS AS (id & 4194303) VIRTUAL
);
INSERT INTO segments4 (id, items) SELECT (batch_id << 22) | seg, items FROM segments;
DROP TABLE segments;
ALTER TABLE segments4 RENAME TO segments;

-- meta's done_seq is from now on a bound, not the latest cursor: the server
-- hands out cursors up to it and raises it by 65,536 at a time, in the
-- commit whose results need more (one write in 65,536 results). After a
-- restart cursors go on from the bound; the ones skipped were never given.
