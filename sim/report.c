/*
 * CSV, tables, plots and progress display.
 */
#include "report.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fl/err.h"

void sim_csv_header(FILE *f) {
  fputs("round,test_accuracy,test_loss,auc,participants,refused,bytes_up,bytes_down,seconds,"
        "train_seconds,network_seconds,aggregation_seconds\n",
        f);
  fflush(f);
}

void sim_csv_row(FILE *f, const sim_round_row *r) {
  fprintf(f, "%d,%.6f,%.6f,%.6f,%zu,%zu,%llu,%llu,%.3f,%.3f,%.3f,%.3f\n", r->round, r->accuracy,
          r->loss, r->auc, r->participants, r->refused, (unsigned long long)r->bytes_up,
          (unsigned long long)r->bytes_down, r->seconds, r->train_s, r->network_s,
          r->aggregation_s);
  fflush(f);
}

/* Writes s with the five XML special characters escaped. */
static void svg_text(FILE *f, const char *s) {
  for (; *s; s++) {
    switch (*s) {
      case '<': fputs("&lt;", f); break;
      case '>': fputs("&gt;", f); break;
      case '&': fputs("&amp;", f); break;
      case '"': fputs("&quot;", f); break;
      case '\'': fputs("&apos;", f); break;
      default: fputc(*s, f);
    }
  }
}

#define SVG_W 640
#define SVG_H 400
#define SVG_L 60
#define SVG_R 20
#define SVG_T 40
#define SVG_B 50

static void svg_axes(FILE *f, int max_round, const char *ylabel) {
  double pw = SVG_W - SVG_L - SVG_R, ph = SVG_H - SVG_T - SVG_B;
  for (int i = 0; i <= 5; i++) {
    double y = SVG_T + ph - ph * i / 5.0;
    fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", SVG_L,
            y, SVG_L + pw, y);
    fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"12\" text-anchor=\"end\">%.1f</text>\n",
            SVG_L - 6, y + 4, i / 5.0);
  }
  int step = max_round <= 10 ? 1 : (max_round + 9) / 10;
  for (int r = 0; r <= max_round; r += step) {
    double x = SVG_L + pw * r / (max_round > 0 ? max_round : 1);
    fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-size=\"12\" text-anchor=\"middle\">%d</text>\n",
            x, SVG_H - SVG_B + 18, r);
  }
  fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
             "stroke=\"#000\"/>\n", SVG_L, SVG_T, pw, ph);
  fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-size=\"13\" text-anchor=\"middle\">round</text>\n",
          SVG_L + pw / 2, SVG_H - 12);
  fprintf(f, "<text x=\"16\" y=\"%.1f\" font-size=\"13\" text-anchor=\"middle\" "
             "transform=\"rotate(-90 16 %.1f)\">%s</text>\n", SVG_T + ph / 2, SVG_T + ph / 2,
          ylabel);
}

int sim_plot_svg(const char *path, const sim_round_row *rows, size_t n, const char *title,
                 bool use_auc) {
  FILE *f = fopen(path, "w");
  if (f == NULL)
    return FL_E_IO;
  int max_round = 1;
  for (size_t i = 0; i < n; i++)
    max_round = rows[i].round > max_round ? rows[i].round : max_round;
  fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
             "font-family=\"sans-serif\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n",
          SVG_W, SVG_H);
  fprintf(f, "<text x=\"%d\" y=\"24\" font-size=\"15\" text-anchor=\"middle\">", SVG_W / 2);
  svg_text(f, title);
  fputs("</text>\n", f);
  svg_axes(f, max_round, use_auc ? "test AUC" : "test accuracy");
  double pw = SVG_W - SVG_L - SVG_R, ph = SVG_H - SVG_T - SVG_B;
  fputs("<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"", f);
  for (size_t i = 0; i < n; i++) {
    double y = use_auc ? rows[i].auc : rows[i].accuracy;
    if (!isfinite(y))
      continue;
    y = y < 0 ? 0 : y > 1 ? 1 : y;
    fprintf(f, "%.1f,%.1f ", SVG_L + pw * rows[i].round / max_round, SVG_T + ph - ph * y);
  }
  fputs("\"/>\n</svg>\n", f);
  int bad = ferror(f);
  if (fclose(f) != 0 || bad)
    return FL_E_IO;
  return FL_OK;
}

/* gnuplot's path from PATH, or NULL. */
static char *find_gnuplot(void) {
  const char *path = getenv("PATH");
  if (path == NULL)
    path = "/usr/bin:/bin";
  while (*path) {
    size_t len = strcspn(path, ":");
    char *cand = malloc(len + sizeof("/gnuplot"));
    if (cand == NULL)
      return NULL;
    memcpy(cand, path, len);
    strcpy(cand + len, "/gnuplot");
    if (len > 0 && access(cand, X_OK) == 0)
      return cand;
    free(cand);
    path += len + (path[len] == ':');
  }
  return NULL;
}

static int run_gnuplot(const char *gnuplot, const char *terminal, const char *png_path,
                       const char *csv_path, const char *title, bool use_auc) {
  char cmd[4200];
  int n = snprintf(cmd, sizeof(cmd), "'%s' >/dev/null 2>&1", gnuplot);
  if (n < 0 || (size_t)n >= sizeof(cmd))
    return FL_E_INVAL;
  FILE *p = popen(cmd, "w");
  if (p == NULL)
    return FL_E_IO;
  fprintf(p,
          "set datafile separator ','\nset terminal %s size 800,500 noenhanced\n"
          "set output '%s'\n"
          /* Rounds are whole numbers: a tick step of at least 1, about ten ticks. */
          "stats '%s' using 1 nooutput\nxstep = STATS_max < 10 ? 1 : ceil(STATS_max / 10.0)\nset "
          "xtics xstep\n"
          "set title '%s'\nset xlabel 'round'\nset ylabel '%s'\nset yrange [0:1]\nset grid\n"
          "set key autotitle columnhead\nset key bottom right\n"
          "plot '%s' using 1:%d with linespoints lw 2 pt 7\n",
          terminal, png_path, csv_path, title, use_auc ? "test AUC" : "test accuracy", csv_path,
          use_auc ? 4 : 2);
  int st = pclose(p);
  return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? FL_OK : FL_E_IO;
}

int sim_plot_png(const char *png_path, const char *csv_path, const char *title, bool use_auc) {
  /* Paths and title go inside gnuplot's single-quoted strings and the shell command. */
  if (strchr(png_path, '\'') || strchr(csv_path, '\'') || strchr(title, '\''))
    return FL_E_INVAL;
  char *gnuplot = find_gnuplot();
  if (gnuplot == NULL)
    return FL_E_UNSUPPORTED;
  int rc = FL_E_INVAL;
  if (strchr(gnuplot, '\'') == NULL) {
    rc = run_gnuplot(gnuplot, "pngcairo", png_path, csv_path, title, use_auc);
    if (rc != FL_OK)
      rc = run_gnuplot(gnuplot, "png", png_path, csv_path, title, use_auc);
  }
  free(gnuplot);
  return rc;
}

void sim_table_print(FILE *f, const char *title, const sim_kv *rows, size_t n) {
  int w = 0;
  for (size_t i = 0; i < n; i++)
    if (rows[i].label && (int)strlen(rows[i].label) > w)
      w = (int)strlen(rows[i].label);
  fprintf(f, "\n%s\n", title);
  for (size_t i = 0; i < n; i++) {
    if (rows[i].label == NULL)
      fprintf(f, "  %.*s\n", w + 20, "--------------------------------------------------------");
    else
      fprintf(f, "  %-*s  %s\n", w, rows[i].label, rows[i].value);
  }
  fflush(f);
}

void sim_progress_init(sim_progress *p, FILE *f) {
  memset(p, 0, sizeof(*p));
  p->f = f;
  p->tty = isatty(fileno(f)) != 0;
  p->last_line = -1e9;
}

#define BAR_WIDTH 30
#define PLAIN_INTERVAL_S 5.0

void sim_progress_update(sim_progress *p, int round, int rounds, size_t done, size_t total,
                         double t, double now) {
  if (p->tty) {
    char bar[BAR_WIDTH + 1];
    size_t fill = total ? done * BAR_WIDTH / total : 0;
    for (size_t i = 0; i < BAR_WIDTH; i++)
      bar[i] = i < fill ? '#' : '-';
    bar[BAR_WIDTH] = '\0';
    int len = fprintf(p->f, "\rround %d/%d [%s] %zu/%zu devices %6.1f s", round, rounds, bar,
                      done, total, t);
    if (len < p->last_len)
      fprintf(p->f, "%*s", p->last_len - len, "");
    p->last_len = len;
  } else if (now - p->last_line >= PLAIN_INTERVAL_S) {
    fprintf(p->f, "round %d/%d: %zu/%zu devices done, %.1f s\n", round, rounds, done, total, t);
    p->last_line = now;
  }
  fflush(p->f);
}

void sim_progress_round(sim_progress *p, const sim_round_row *r, int rounds) {
  if (p->tty && p->last_len > 0)
    fprintf(p->f, "\r%*s\r", p->last_len, "");
  p->last_len = 0;
  if (isnan(r->accuracy) && isnan(r->loss))
    fprintf(p->f, "round %d/%d: closed without a new version", r->round, rounds);
  else
    fprintf(p->f, "round %d/%d: accuracy %.4f loss %.4f", r->round, rounds, r->accuracy,
            r->loss);
  if (isfinite(r->auc))
    fprintf(p->f, " auc %.4f", r->auc);
  fprintf(p->f, ", %zu participants, %zu refused, %.1f s\n", r->participants, r->refused,
          r->seconds);
  fflush(p->f);
}
