/*
 * Training cohorts (cohort.c): which devices a plan's rounds may select. A plan's "cohort"
 * names labels the device's labels must contain (as a rollout's cohort: JSON containment, the
 * labels being the enrollment token's, which a device cannot choose) and conditions the device
 * must report at the check-in (CheckInRequest.conditions, set by the embedder through
 * fl_client_set_conditions). A device outside the cohort is told to wait ("not_eligible") and
 * never becomes a candidate of a draw, so fair selection draws among eligible devices only.
 */
#ifndef FL__COHORT_H
#define FL__COHORT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store_pg.h"

#define FL_COHORT_MAX_LABELS 8
#define FL_COHORT_MAX_CONDS 8
#define FL_COHORT_NAME_MAX 64 /* bytes of a label key, value or condition, with the NUL */

/* Fixed size: a plan is copied by value into the round cache. */
typedef struct fl_cohort {
  uint32_t n_labels, n_conds;
  char keys[FL_COHORT_MAX_LABELS][FL_COHORT_NAME_MAX];
  char values[FL_COHORT_MAX_LABELS][FL_COHORT_NAME_MAX];
  char conds[FL_COHORT_MAX_CONDS][FL_COHORT_NAME_MAX];
} fl_cohort;

/* Parses {"labels": {"k": "v", ...}, "conditions": ["c", ...]} (both optional) into *co.
 * NULL j: no cohort (everyone). -1 with a message on anything else. */
int fl__cohort_parse(fl_cohort *co, const json_t *j, char msg[160]);
/* The cohort in the JSON form fl__cohort_parse reads; NULL for an empty one (or on OOM). */
json_t *fl__cohort_to_json(const fl_cohort *co);
bool fl__cohort_empty(const fl_cohort *co);
/* The cohort's labels as a JSON object text for `labels @> $n::jsonb`; "{}" without labels.
 * Returns a malloc'ed string or NULL. */
char *fl__cohort_labels_text(const fl_cohort *co);

/* Whether every condition of the cohort is among the reported ones. On a miss, names the
 * first missing condition in why. */
bool fl__cohort_conditions_met(const fl_cohort *co, char *const *conds, size_t n, char *why,
                               size_t why_len);

/* Whether a device belongs to the cohort: its labels (read here, one statement only when the
 * cohort names labels) and the conditions it reported. 1 yes, 0 no (why says which part
 * failed), -1 database error. */
int fl__cohort_eligible(PGconn *c, const fl_cohort *co, uint64_t device_id, char *const *conds,
                        size_t n, char *why, size_t why_len);

#endif
