/*
 * Device labels and conditions of a simulated fleet (mix.c), for training cohorts
 * (docs/API.md, "Training cohorts").
 *   --labels site=a:0.5,site=b:0.3     device k gets one of these labels with these shares
 *                                      (drawn from the seed and k; the rest get none); labels
 *                                      are its enrollment token's
 *   --conditions charging:0.7,idle:0.5 at every check-in a device reports each condition with
 *                                      its probability, independently
 */
#ifndef SIM_MIX_H
#define SIM_MIX_H

#include <stddef.h>
#include <stdint.h>

#define SIM_MIX_MAX 16
#define SIM_MIX_NAME 64

typedef struct sim_mix {
  size_t n;
  char key[SIM_MIX_MAX][SIM_MIX_NAME]; /* labels: the key; conditions: unused */
  char value[SIM_MIX_MAX][SIM_MIX_NAME];
  double p[SIM_MIX_MAX];
} sim_mix;

/* "k=v:share,..." (labels, shares summing to at most 1) or "name:p,..." (conditions); NULL or
 * "" is an empty mix. -1 with a message in msg on a malformed spec. */
int sim_mix_parse_labels(sim_mix *m, const char *spec, char *msg, size_t cap);
int sim_mix_parse_conditions(sim_mix *m, const char *spec, char *msg, size_t cap);
/* The label entry of device k (-1: none), a stable draw from seed and k. */
int sim_mix_label_of(const sim_mix *m, uint64_t seed, size_t k);
/* The conditions of one check-in: each with its probability, given u uniform draws in [0, 1)
 * (one per condition); the names go to out (pointers into m). Returns how many. */
size_t sim_mix_conditions(const sim_mix *m, const double *u, const char **out);

#endif
