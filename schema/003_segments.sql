-- forkpool schema, version 3: futures stored by segments, outcomes by groups.
--
-- Version 2 stored one futures row per item, written three times (stored,
-- claimed, finished): about 60,000 instructions of B-tree work per item, and
-- the whole of the server's time in a large batch (docs/benchmarks.md). Here a
-- write touches one row per 256 items or per group of outcomes instead.
--
-- segments: the items seg*256 .. seg*256+255 of a batch (fewer in its last
-- segment). items holds one record per item in index order: state, attempts,
-- worker, started_at and the completion cursor (server/segfmt.h has the byte
-- format). It is rewritten when items are claimed, requeued or become done.
CREATE TABLE segments (
	batch_id INTEGER NOT NULL,
	seg      INTEGER NOT NULL,
	items    BLOB    NOT NULL,
	PRIMARY KEY (batch_id, seg)
);

-- The items' arguments, apart from their states so that rewriting those never
-- copies these: each item's JSON text followed by a newline, in index order.
-- Written once, when the batch is stored, and read once, when claimed. WITHOUT
-- ROWID: one B-tree rather than a table and its key's index, one page fewer
-- per submission (callgrind: 5.7% fewer instructions per W2 call, 2.6% more
-- per W1 item, whose segments' arguments then spill into overflow pages).
-- segments and outcomes, rewritten or read again and again, keep their rowid.
CREATE TABLE seg_args (
	batch_id INTEGER NOT NULL,
	seg      INTEGER NOT NULL,
	args     BLOB    NOT NULL,
	PRIMARY KEY (batch_id, seg)
) WITHOUT ROWID;

-- Done items' outcomes (result or error, times, attempts), in completion
-- order: each row is a group of records with increasing completion cursors,
-- last_seq being its last one's. Written once; as_completed reads walk them.
CREATE TABLE outcomes (
	batch_id INTEGER NOT NULL,
	last_seq INTEGER NOT NULL,
	recs     BLOB    NOT NULL,
	PRIMARY KEY (batch_id, last_seq)
);

-- The futures table of version 2 is converted into these by the server
-- (store.c, convert_futures) in this migration's transaction, then dropped.
