/* progress.h - progress reporting on stderr for long commands.
 *
 * On a terminal a bar is redrawn in place (at most 10 times a second):
 *   [########............] 1200/5000  24%  123.4 rows/s  ETA 0:31
 * Elsewhere (a log file, a pipe) a plain line is written every `interval`
 * seconds:  ingest: 1200/5000 (24%), 123.4 rows/s, ETA 0:31
 * The caller owns the struct; one thread updates it.
 */
#ifndef VLM_PROGRESS_H
#define VLM_PROGRESS_H

#include <stddef.h>
#include <stdio.h>

typedef struct {
  FILE *out;
  const char *label;  /* "ingest" */
  long total;         /* items expected, or -1 if unknown */
  int tty;            /* redraw a bar (1) or print lines (0) */
  int quiet;          /* print nothing */
  double interval;    /* seconds between lines when not a terminal */
  double start;       /* monotonic seconds at init */
  double last;        /* when the last update was printed */
  int drawn;          /* a bar is on the screen */
} vlm_progress;

/* Start reporting; tty is detected from out (VLMDB_PROGRESS=lines|bar|off
 * overrides, VLMDB_PROGRESS_INTERVAL sets the seconds between lines,
 * default 5). */
void vlm_progress_init(vlm_progress *p, FILE *out, const char *label,
                       long total);
/* Report done items (rate limited: cheap to call often). */
void vlm_progress_update(vlm_progress *p, long done);
/* Erase the bar, if any; the caller prints its summary next. */
void vlm_progress_finish(vlm_progress *p);

/* Seconds since p was initialized. */
double vlm_progress_elapsed(const vlm_progress *p);

/* Monotonic clock in seconds. */
double vlm_now(void);

/* Format one progress text into buf (bar_width 0 = no bar):
 *   "[####....] 1200/5000  24%  123.4 rows/s  ETA 0:31"
 * With total < 0 the bar, percentage and ETA are left out. */
void vlm_progress_format(char *buf, size_t size, long done, long total,
                         double elapsed, int bar_width);

/* Format seconds as "m:ss" or "h:mm:ss". */
void vlm_format_duration(char *buf, size_t size, double seconds);

#endif
