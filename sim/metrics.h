/*
 * Where a round's time goes on the coordinator's side: fl-sim reads the coordinator's
 * Prometheus text (/metrics) before and after a round and reports, per device route (check-in,
 * download, update), how many requests it served and how long they took on average, plus the
 * group commits that acknowledged the updates. The sums of request time are busy time summed
 * over the coordinator's connection threads, not wall time.
 */
#ifndef SIM_METRICS_H
#define SIM_METRICS_H

#include <stdint.h>
#include <stdio.h>

typedef enum sim_route { SIM_R_CHECKIN, SIM_R_DOWNLOAD, SIM_R_UPDATE, SIM_R_COUNT } sim_route;

typedef struct sim_coord_stats {
  uint64_t n[SIM_R_COUNT];   /* requests served */
  double sum_s[SIM_R_COUNT]; /* their summed duration */
  uint64_t commit_batches, commit_updates;
  double commit_s;
} sim_coord_stats;

/* Parses the counters above out of Prometheus text (the coordinator's route names "checkin",
 * "download", "update"); missing series read as 0. FL_E_PARSE when no series is found at all. */
int sim_coord_stats_parse(sim_coord_stats *out, const char *text);
/* b - a, field by field. */
void sim_coord_stats_sub(sim_coord_stats *out, const sim_coord_stats *b, const sim_coord_stats *a);
/* One line: "checkin 1300 x 2.1 ms, download 1000 x 25 ms, update 1000 x 40 ms, commits 120
 * (8.3 updates, 6.0 ms each)". */
void sim_coord_stats_print(FILE *f, const char *prefix, const sim_coord_stats *d);

#endif
