/* convert.h - schema version 3's conversion of version 2's futures table
 * (one row per item) into segments, seg_args and outcomes (segfmt.h). */
#ifndef FORKPOOL_CONVERT_H
#define FORKPOOL_CONVERT_H

struct sqlite3;

/* Runs inside the transaction of migration 3, after schema/003_segments.sql:
 * converts every row of futures, if that table exists, then drops it. 0, or
 * -1 with the reason logged (the caller rolls the migration back). */
int convert_v2_futures(struct sqlite3 *db);

#endif
