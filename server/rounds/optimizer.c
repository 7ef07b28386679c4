/*
 * Server optimizers; see optimizer.h for the update rules. The arithmetic is done in double
 * per element and stored as float32, the precision of the weights themselves.
 */
#include "rounds/optimizer.h"

#include <math.h>
#include <string.h>

static const char *const NAMES[] = {"fedavg", "fedavgm", "fedadam", "fedyogi"};

int fl__opt_kind(const char *name) {
  for (int i = 0; i < 4; i++)
    if (name != NULL && strcmp(name, NAMES[i]) == 0)
      return i;
  return -1;
}

const char *fl__opt_name(int kind) { return kind >= 0 && kind < 4 ? NAMES[kind] : NULL; }

void fl__opt_defaults(fl_opt_params *p, int kind) {
  p->kind = kind;
  p->lr = (kind == FL_OPT_FEDADAM || kind == FL_OPT_FEDYOGI) ? 0.01 : 1.0;
  p->momentum = 0.9;
  p->beta1 = 0.9;
  p->beta2 = 0.99;
  p->tau = 1e-3;
}

int fl__opt_num_state(int kind) {
  switch (kind) {
  case FL_OPT_FEDAVGM: return 1;
  case FL_OPT_FEDADAM:
  case FL_OPT_FEDYOGI: return 2;
  default: return 0;
  }
}

void fl__opt_init_state(const fl_opt_params *p, float *m, float *v, size_t n) {
  if (m != NULL)
    memset(m, 0, n * sizeof *m);
  if (v != NULL)
    for (size_t i = 0; i < n; i++)
      v[i] = (float)(p->tau * p->tau);
}

/* Adam and Yogi share the first moment and the step; they differ in the second moment. */
static void step_adaptive(const fl_opt_params *p, float *w, const float *d, float *m, float *v,
                          size_t n) {
  const double b1 = p->beta1, b2 = p->beta2;
  for (size_t i = 0; i < n; i++) {
    double di = d[i], d2 = di * di;
    double mi = b1 * m[i] + (1.0 - b1) * di;
    double vi = v[i];
    if (p->kind == FL_OPT_FEDYOGI) {
      double s = (vi - d2 > 0) - (vi - d2 < 0);
      vi = vi - (1.0 - b2) * d2 * s;
    } else {
      vi = b2 * vi + (1.0 - b2) * d2;
    }
    m[i] = (float)mi;
    v[i] = (float)vi;
    w[i] = (float)(w[i] + p->lr * mi / (sqrt(vi) + p->tau));
  }
}

void fl__opt_step(const fl_opt_params *p, float *w, const float *d, float *m, float *v, size_t n) {
  switch (p->kind) {
  case FL_OPT_FEDAVGM:
    for (size_t i = 0; i < n; i++) {
      double mi = p->momentum * m[i] + d[i];
      m[i] = (float)mi;
      w[i] = (float)(w[i] + p->lr * mi);
    }
    break;
  case FL_OPT_FEDADAM:
  case FL_OPT_FEDYOGI:
    step_adaptive(p, w, d, m, v, n);
    break;
  default:
    for (size_t i = 0; i < n; i++)
      w[i] = (float)(w[i] + p->lr * (double)d[i]);
    break;
  }
}
