/*
 * Labels and conditions of simulated devices (mix.h).
 */
#include "mix.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *msg, size_t cap, const char *what, const char *spec) {
  snprintf(msg, cap, "bad %s %s", what, spec);
  return -1;
}

/* Splits "name:p" (name may hold '='); the name is 1-63 characters without blanks, quotes or
 * backslashes (what the coordinator accepts), p a number in (0, 1]. */
static int entry(const char *s, size_t len, char *name, double *p) {
  const char *colon = memchr(s, ':', len);
  if (colon == NULL || colon == s || (size_t)(colon - s) >= SIM_MIX_NAME)
    return -1;
  memcpy(name, s, (size_t)(colon - s));
  name[colon - s] = '\0';
  for (const char *c = name; *c; c++)
    if (*c <= ' ' || *c > '~' || *c == '"' || *c == '\\' || *c == ',')
      return -1;
  char num[32], *end;
  size_t nl = len - (size_t)(colon + 1 - s);
  if (nl == 0 || nl >= sizeof num)
    return -1;
  memcpy(num, colon + 1, nl);
  num[nl] = '\0';
  *p = strtod(num, &end);
  return *end == '\0' && *p > 0 && *p <= 1 ? 0 : -1;
}

static int parse(sim_mix *m, const char *spec, int labels, char *msg, size_t cap) {
  const char *what = labels ? "--labels" : "--conditions";
  memset(m, 0, sizeof *m);
  double sum = 0;
  for (const char *s = spec; s != NULL && *s;) {
    const char *comma = strchr(s, ',');
    size_t len = comma ? (size_t)(comma - s) : strlen(s);
    char name[SIM_MIX_NAME];
    double p;
    if (m->n == SIM_MIX_MAX || entry(s, len, name, &p))
      return fail(msg, cap, what, spec);
    char *eq = strchr(name, '=');
    if (labels != (eq != NULL) || (eq != NULL && (eq == name || eq[1] == '\0')))
      return fail(msg, cap, what, spec);
    if (labels) {
      *eq = '\0';
      snprintf(m->value[m->n], SIM_MIX_NAME, "%s", eq + 1);
    }
    snprintf(m->key[m->n], SIM_MIX_NAME, "%s", name);
    m->p[m->n++] = p;
    sum += p;
    s = comma ? comma + 1 : s + len;
  }
  if (labels && sum > 1 + 1e-9)
    return fail(msg, cap, "--labels (shares above 1)", spec);
  return 0;
}

int sim_mix_parse_labels(sim_mix *m, const char *spec, char *msg, size_t cap) {
  return parse(m, spec, 1, msg, cap);
}

int sim_mix_parse_conditions(sim_mix *m, const char *spec, char *msg, size_t cap) {
  return parse(m, spec, 0, msg, cap);
}

static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

int sim_mix_label_of(const sim_mix *m, uint64_t seed, size_t k) {
  double u = (double)(mix64(seed * 0x100000001b3ULL ^ mix64((uint64_t)k)) >> 11) * 0x1p-53;
  double acc = 0;
  for (size_t i = 0; i < m->n; i++) {
    acc += m->p[i];
    if (u < acc)
      return (int)i;
  }
  return -1;
}

size_t sim_mix_conditions(const sim_mix *m, const double *u, const char **out) {
  size_t n = 0;
  for (size_t i = 0; i < m->n; i++)
    if (u[i] < m->p[i])
      out[n++] = m->key[i];
  return n;
}
