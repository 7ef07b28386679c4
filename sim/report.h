/*
 * What fl-sim writes: a CSV line per round, summary tables, an accuracy-versus-round plot (SVG
 * drawn here, PNG through gnuplot when it is installed) and a progress display (a redrawn bar on
 * a terminal, occasional plain lines otherwise so that logs stay readable).
 */
#ifndef SIM_REPORT_H
#define SIM_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct sim_round_row {
  int round;
  double accuracy;  /* on the held-out test set; NaN when not measured */
  double loss;
  double auc;       /* anomaly detection only, else NaN */
  size_t participants, refused;
  uint64_t bytes_up, bytes_down;
  double seconds;
  double train_s, network_s, aggregation_s; /* where the round's time went */
} sim_round_row;

/* The CSV header line; then one sim_csv_row per round. Both flush. */
void sim_csv_header(FILE *f);
void sim_csv_row(FILE *f, const sim_round_row *r);

/* SVG line plot of y = accuracy (or AUC when use_auc) against round, axes 0..1 on y.
 * FL_E_IO when the file cannot be written. */
int sim_plot_svg(const char *path, const sim_round_row *rows, size_t n, const char *title,
                 bool use_auc);

/* PNG of the same plot from the CSV through gnuplot (pngcairo, else png). FL_E_UNSUPPORTED when
 * gnuplot is not found, FL_E_IO when it fails. */
int sim_plot_png(const char *png_path, const char *csv_path, const char *title, bool use_auc);

/* A two-column table with a title; rows whose label is NULL are separators. */
typedef struct sim_kv {
  const char *label;
  char value[128];
} sim_kv;
void sim_table_print(FILE *f, const char *title, const sim_kv *rows, size_t n);

typedef struct sim_progress {
  FILE *f;
  bool tty;
  double last_line; /* seconds, for the plain-line rate limit */
  int last_len;
} sim_progress;

void sim_progress_init(sim_progress *p, FILE *f);
/* Round `round` of `rounds`: `done` of `total` devices finished, `t` seconds into the round. */
void sim_progress_update(sim_progress *p, int round, int rounds, size_t done, size_t total,
                         double t, double now);
/* Ends the line of a bar (a no-op for plain output) and prints one line about the round. */
void sim_progress_round(sim_progress *p, const sim_round_row *r, int rounds);

#endif
