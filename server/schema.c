/* schema.c - the schema files of schema/, embedded in the server binary so that
 * it needs nothing beside itself at run time. Migration i (1-based) brings a
 * database from user_version i-1 to i. */
#include "schema.h"

#define EMBED(sym, file)                                                                         \
	__asm__(".section .rodata\n"                                                             \
		".global " #sym "\n"                                                              \
		".type " #sym ", @object\n"                                                       \
		".balign 16\n" #sym ":\n"                                                         \
		".incbin \"" file "\"\n"                                                          \
		".byte 0\n"                                                                       \
		".previous\n")

EMBED(schema_001, "schema/001_init.sql");
EMBED(schema_002, "schema/002_retries_idempotency.sql");
EMBED(schema_003, "schema/003_segments.sql");
EMBED(schema_004, "schema/004_fewer_pages.sql");
extern const char schema_001[], schema_002[], schema_003[], schema_004[];

const char *const schema_migrations[] = {schema_001, schema_002, schema_003, schema_004};
const int schema_version = (int)(sizeof schema_migrations / sizeof schema_migrations[0]);
