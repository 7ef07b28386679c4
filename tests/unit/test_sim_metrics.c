/* The coordinator /metrics reader behind fl-sim's per-round breakdown. */
#include <criterion/criterion.h>
#include <math.h>

#include "fl/err.h"
#include "metrics.h"

static const char *TEXT =
    "# HELP fl_commit_batches_total Group commit transactions.\n"
    "# TYPE fl_commit_batches_total counter\n"
    "fl_commit_batches_total 40\n"
    "fl_commit_updates_total 1000\n"
    "fl_commit_duration_seconds_bucket{le=\"+Inf\"} 40\n"
    "fl_commit_duration_seconds_sum 0.8\n"
    "fl_commit_duration_seconds_count 40\n"
    "fl_http_request_duration_seconds_bucket{route=\"checkin\",le=\"0.005\"} 10\n"
    "fl_http_request_duration_seconds_sum{route=\"checkin\"} 2.5\n"
    "fl_http_request_duration_seconds_count{route=\"checkin\"} 1250\n"
    "fl_http_request_duration_seconds_sum{route=\"checkin_extra\"} 99\n"
    "fl_http_request_duration_seconds_sum{route=\"update\"} 30\n"
    "fl_http_request_duration_seconds_count{route=\"update\"} 1000\n";

Test(sim_metrics, reads_routes_and_commits) {
  sim_coord_stats s;
  cr_assert_eq(sim_coord_stats_parse(&s, TEXT), FL_OK);
  cr_assert_eq(s.n[SIM_R_CHECKIN], 1250);
  cr_assert_float_eq(s.sum_s[SIM_R_CHECKIN], 2.5, 1e-12, "a longer route name must not match");
  cr_assert_eq(s.n[SIM_R_UPDATE], 1000);
  cr_assert_float_eq(s.sum_s[SIM_R_UPDATE], 30, 1e-12);
  cr_assert_eq(s.n[SIM_R_DOWNLOAD], 0, "a route not served yet reads as 0");
  cr_assert_eq(s.commit_batches, 40);
  cr_assert_eq(s.commit_updates, 1000);
  cr_assert_float_eq(s.commit_s, 0.8, 1e-12);
}

Test(sim_metrics, differences_and_the_printed_line) {
  sim_coord_stats a, b, d;
  cr_assert_eq(sim_coord_stats_parse(&a, TEXT), FL_OK);
  b = a;
  b.n[SIM_R_UPDATE] += 500;
  b.sum_s[SIM_R_UPDATE] += 10;
  b.commit_batches += 50;
  b.commit_updates += 500;
  b.commit_s += 1;
  sim_coord_stats_sub(&d, &b, &a);
  cr_assert_eq(d.n[SIM_R_UPDATE], 500);
  cr_assert_eq(d.n[SIM_R_CHECKIN], 0);
  char *line = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&line, &len);
  sim_coord_stats_print(f, "> ", &d);
  fclose(f);
  cr_assert_str_eq(line, "> checkin 0 x 0.0 ms, download 0 x 0.0 ms, update 500 x 20.0 ms, "
                         "commits 50 (10.0 updates, 20.0 ms each)\n");
  free(line);
}

Test(sim_metrics, text_without_the_series_is_refused) {
  sim_coord_stats s;
  cr_assert_eq(sim_coord_stats_parse(&s, "# nothing here\nother_metric 1\n"), FL_E_PARSE);
  cr_assert_eq(sim_coord_stats_parse(&s, ""), FL_E_PARSE);
}
