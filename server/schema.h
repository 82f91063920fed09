/* schema.h - the embedded schema migrations (schema/NNN_*.sql). */
#ifndef FORKPOOL_SCHEMA_H
#define FORKPOOL_SCHEMA_H

/* schema_migrations[i] is the SQL that takes user_version i to i + 1. */
extern const char *const schema_migrations[];
extern const int schema_version;

#endif
