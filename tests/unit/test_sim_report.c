/* fl-sim output: CSV lines, the SVG plot, tables and the non-terminal progress lines. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fl/err.h"
#include "report.h"

static char *slurp(FILE *f) {
  fflush(f);
  long n = ftell(f);
  rewind(f);
  char *s = calloc((size_t)n + 1, 1);
  cr_assert_eq(fread(s, 1, (size_t)n, f), (size_t)n);
  return s;
}

static char *slurp_path(const char *path) {
  FILE *f = fopen(path, "r");
  cr_assert_not_null(f);
  fseek(f, 0, SEEK_END);
  char *s = slurp(f);
  fclose(f);
  return s;
}

Test(sim_report, csv_header_and_row) {
  FILE *f = tmpfile();
  sim_round_row r = {.round = 3, .accuracy = 0.8125, .loss = 0.5, .auc = NAN,
                     .participants = 50, .refused = 4, .bytes_up = 123456, .bytes_down = 789,
                     .seconds = 1.25, .train_s = 0.5, .network_s = 0.25, .aggregation_s = 0.125};
  sim_csv_header(f);
  sim_csv_row(f, &r);
  char *s = slurp(f);
  cr_assert_str_eq(s,
                   "round,test_accuracy,test_loss,auc,participants,refused,bytes_up,bytes_down,"
                   "seconds,train_seconds,network_seconds,aggregation_seconds\n"
                   "3,0.812500,0.500000,nan,50,4,123456,789,1.250,0.500,0.250,0.125\n");
  free(s);
  fclose(f);
}

Test(sim_report, svg_has_one_point_per_round) {
  char path[] = "/tmp/test_sim_report_XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  close(fd);
  sim_round_row rows[4];
  for (int i = 0; i < 4; i++)
    rows[i] = (sim_round_row){.round = i + 1, .accuracy = 0.2 * (i + 1), .auc = NAN};
  cr_assert_eq(sim_plot_svg(path, rows, 4, "fleet <50 & 3>", false), FL_OK);
  char *s = slurp_path(path);
  cr_assert_not_null(strstr(s, "<svg"));
  cr_assert_not_null(strstr(s, "fleet &lt;50 &amp; 3&gt;"), "the title is escaped");
  const char *pts = strstr(s, "points=\"");
  cr_assert_not_null(pts);
  int commas = 0;
  for (const char *p = pts + 8; *p != '"'; p++)
    commas += *p == ',';
  cr_assert_eq(commas, 4);
  /* Accuracy 0.8 at the last round sits at 80% of the plot's height above the bottom. */
  cr_assert_not_null(strstr(s, "620.0,102.0"), "%s", pts);
  free(s);
  /* The AUC plot skips rounds that have none. */
  cr_assert_eq(sim_plot_svg(path, rows, 4, "t", true), FL_OK);
  s = slurp_path(path);
  cr_assert_not_null(strstr(s, "points=\"\""));
  free(s);
  unlink(path);
  cr_assert_eq(sim_plot_svg("/nonexistent-dir/x.svg", rows, 4, "t", false), FL_E_IO);
}

Test(sim_report, table_aligns_values) {
  FILE *f = tmpfile();
  sim_kv rows[3] = {{.label = "rounds", .value = "5"}, {.label = NULL},
                    {.label = "bad signature", .value = "12"}};
  sim_table_print(f, "Summary", rows, 3);
  char *s = slurp(f);
  cr_assert_not_null(strstr(s, "Summary\n"));
  cr_assert_not_null(strstr(s, "  rounds         5\n"));
  cr_assert_not_null(strstr(s, "  bad signature  12\n"));
  cr_assert_not_null(strstr(s, "  ----"));
  free(s);
  fclose(f);
}

Test(sim_report, plain_progress_is_rate_limited) {
  FILE *f = tmpfile();
  sim_progress p;
  sim_progress_init(&p, f);
  cr_assert(!p.tty);
  sim_progress_update(&p, 1, 5, 10, 100, 0.5, 100.0);
  sim_progress_update(&p, 1, 5, 20, 100, 1.0, 101.0); /* within 5 s: dropped */
  sim_progress_update(&p, 1, 5, 90, 100, 6.0, 106.0);
  sim_round_row r = {.round = 1, .accuracy = 0.5, .loss = 1.0, .auc = NAN, .participants = 90,
                     .refused = 2, .seconds = 6.5};
  sim_progress_round(&p, &r, 5);
  char *s = slurp(f);
  cr_assert_str_eq(s,
                   "round 1/5: 10/100 devices done, 0.5 s\n"
                   "round 1/5: 90/100 devices done, 6.0 s\n"
                   "round 1/5: accuracy 0.5000 loss 1.0000, 90 participants, 2 refused, 6.5 s\n");
  free(s);
  fclose(f);
}
