/* log.h - one line per event, logfmt (key=value), to stderr:
 *     ts=2026-11-25T10:00:00.123Z level=info event=listen addr=127.0.0.1:8080
 * The event name says what happened; the rest are key=value pairs the caller
 * formats (quote values that may hold spaces: msg="..."). */
#ifndef FORKPOOL_LOG_H
#define FORKPOOL_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Returns -1 for an unknown name (debug, info, warn, error). */
int log_set_level(const char *name);
__attribute__((format(printf, 3, 4))) void log_event(enum log_level lv, const char *event,
						     const char *fmt, ...);

#define log_info(ev, ...) log_event(LOG_INFO, ev, __VA_ARGS__)
#define log_warn(ev, ...) log_event(LOG_WARN, ev, __VA_ARGS__)
#define log_error(ev, ...) log_event(LOG_ERROR, ev, __VA_ARGS__)
#define log_debug(ev, ...) log_event(LOG_DEBUG, ev, __VA_ARGS__)

#endif
