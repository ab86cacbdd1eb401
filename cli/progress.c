/* progress.c - a progress bar on terminals, periodic lines elsewhere. */
#include "progress.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double vlm_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void vlm_format_duration(char *buf, size_t size, double seconds) {
  if (!isfinite(seconds) || seconds < 0)
    seconds = 0;
  long s = (long)(seconds + 0.5);
  if (s >= 3600)
    snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else
    snprintf(buf, size, "%ld:%02ld", s / 60, s % 60);
}

void vlm_progress_format(char *buf, size_t size, long done, long total,
                         double elapsed, int bar_width) {
  double rate = elapsed > 0 ? (double)done / elapsed : 0;
  size_t n = 0;
  buf[0] = '\0';
  if (total > 0 && bar_width > 0 && size > (size_t)bar_width + 3) {
    long filled = done >= total ? bar_width : done * bar_width / total;
    buf[n++] = '[';
    for (int i = 0; i < bar_width; i++)
      buf[n++] = i < filled ? '#' : '.';
    buf[n++] = ']';
    buf[n++] = ' ';
    buf[n] = '\0';
  }
  if (total >= 0) {
    int pct = total > 0 ? (int)(100.0 * (double)done / (double)total) : 100;
    if (pct > 100)
      pct = 100;
    char eta[32];
    if (done > 0 && rate > 0 && total >= done)
      vlm_format_duration(eta, sizeof eta, (double)(total - done) / rate);
    else
      strcpy(eta, "?");
    snprintf(buf + n, size - n, "%ld/%ld  %3d%%  %.1f rows/s  ETA %s", done,
             total, pct, rate, eta);
  } else {
    snprintf(buf + n, size - n, "%ld  %.1f rows/s", done, rate);
  }
}

void vlm_progress_init(vlm_progress *p, FILE *out, const char *label,
                       long total) {
  memset(p, 0, sizeof *p);
  p->out = out;
  p->label = label;
  p->total = total;
  p->tty = isatty(fileno(out));
  p->interval = 5.0;
  const char *mode = getenv("VLMDB_PROGRESS");
  if (mode && !strcmp(mode, "lines"))
    p->tty = 0;
  else if (mode && !strcmp(mode, "bar"))
    p->tty = 1;
  else if (mode && !strcmp(mode, "off"))
    p->quiet = 1;
  const char *iv = getenv("VLMDB_PROGRESS_INTERVAL");
  if (iv && atof(iv) > 0)
    p->interval = atof(iv);
  p->start = p->last = vlm_now();
}

double vlm_progress_elapsed(const vlm_progress *p) {
  return vlm_now() - p->start;
}

void vlm_progress_update(vlm_progress *p, long done) {
  if (p->quiet)
    return;
  double now = vlm_now();
  if (now - p->last < (p->tty ? 0.1 : p->interval))
    return;
  p->last = now;
  char text[256];
  if (p->tty) {
    vlm_progress_format(text, sizeof text, done, p->total, now - p->start, 24);
    fprintf(p->out, "\r%s: %s\033[K", p->label, text);
    p->drawn = 1;
  } else {
    vlm_progress_format(text, sizeof text, done, p->total, now - p->start, 0);
    fprintf(p->out, "%s: %s\n", p->label, text);
  }
  fflush(p->out);
}

void vlm_progress_finish(vlm_progress *p) {
  if (p->drawn) {
    fputs("\r\033[K", p->out);
    fflush(p->out);
    p->drawn = 0;
  }
}
