/*
 * Federated evaluation: the hold-out data, the evaluation of a candidate version an
 * evaluation gate asked for, and its report (fl.v1.EvalReport, POST /v1/evaluations).
 *
 * The evaluation runs inside the step that verified the model: hold-out sets are small and a
 * forward pass without gradients is cheap next to training, so it does not get a step of its
 * own the caller would have to schedule.
 */
#include <math.h>
#include <string.h>

#include "client_internal.h"

#define EVAL_BATCH 64

fl_err fl_client_set_holdout_source(fl_client *c, const fl_data_source *src) {
  if (c == NULL)
    return FL_E_INVAL;
  return fl__slot_set_source(c, &c->hold, src);
}

fl_err fl_client_set_holdout_memory(fl_client *c, const float *x, const int32_t *labels, size_t n,
                                    size_t x_dim) {
  if (c == NULL || x == NULL)
    return FL_E_INVAL;
  return fl__slot_set_memory(&c->hold, c->alloc, NULL, x, labels, n, x_dim);
}

fl_err fl_client_set_holdout_csv(fl_client *c, const char *path, int label_col) {
  if (c == NULL || path == NULL)
    return FL_E_INVAL;
  return fl__slot_set_csv(c, &c->hold, path, label_col);
}

fl_err fl_client_set_anomaly_threshold(fl_client *c, float threshold) {
  if (c == NULL || !(threshold >= 0) || !isfinite(threshold))
    return FL_E_INVAL;
  c->anomaly_threshold = threshold;
  return FL_OK;
}

void fl__eval_note(fl_client *c, const Fl__V1__EvalTask *t) {
  /* A gate's task or a plan's evaluation campaign (docs/API.md), never both. */
  if (t == NULL || !c->hold.have || t->version == 0 || (t->gate_id == 0) == (t->campaign_id == 0) ||
      t->sha256.len != FL_SHA256_LEN)
    return;
  c->eval.model_id = t->model_id;
  c->eval.version = t->version;
  c->eval.gate_id = t->gate_id;
  c->eval.campaign_id = t->campaign_id;
  memcpy(c->eval.sha256, t->sha256.data, FL_SHA256_LEN);
  c->want_eval = true;
}

/* Running sums over the hold-out examples; tp, fp, fn count alarms against the hold-out labels
 * of an anomaly detector (label != 0: a true anomaly), when the hold-out data has labels. */
typedef struct eval_sums {
  double loss, correct, anomalies;
  double tp, fp, fn;
  uint64_t n;
  bool labelled;
} eval_sums;

typedef struct eval_bufs {
  float *x, *targets, *out;
  int32_t *labels;
} eval_bufs;

static void bufs_free(const fl_allocator *a, eval_bufs *b) {
  fl__free(a, b->x);
  fl__free(a, b->targets);
  fl__free(a, b->out);
  fl__free(a, b->labels);
}

/* Whether the hold-out data has labels an anomaly detector's alarms can be scored against:
 * only the built-in sources say so (an embedder's source may not fill labels). */
static bool holdout_labelled(const fl_client *c) {
  return c->hold.src.ctx == &c->hold.mem && c->hold.mem.labels != NULL;
}

/* Targets only for a regression model whose output differs from its input; reconstruction
 * outputs only when anomalies are counted; labels for a classifier, or for an anomaly
 * detector whose hold-out data has them. */
static int bufs_alloc(fl_client *c, fl_model *m, eval_bufs *b, bool anomalies) {
  size_t in = fl__model_input_size(m), out = fl__model_output_size(m);
  bool ce = fl__model_spec(m)->loss == FL_LOSS_SOFTMAX_CE;
  memset(b, 0, sizeof *b);
  b->x = fl__calloc(c->alloc, EVAL_BATCH * in, sizeof *b->x);
  if (ce || (anomalies && holdout_labelled(c)))
    b->labels = fl__calloc(c->alloc, EVAL_BATCH, sizeof *b->labels);
  else if (out != in)
    b->targets = fl__calloc(c->alloc, EVAL_BATCH * out, sizeof *b->targets);
  if (anomalies)
    b->out = fl__calloc(c->alloc, EVAL_BATCH * out, sizeof *b->out);
  if (b->x == NULL || ((ce || (anomalies && holdout_labelled(c))) && b->labels == NULL) ||
      (!ce && out != in && b->targets == NULL) || (anomalies && b->out == NULL)) {
    bufs_free(c->alloc, b);
    return FL_E_NOMEM;
  }
  return FL_OK;
}

/* Examples of the batch whose mean squared reconstruction error exceeds the threshold, and
 * with labels the alarms that are right (tp), wrong (fp) and the anomalies missed (fn). */
static int count_anomalies(fl_client *c, fl_model *m, const eval_bufs *b, size_t n, eval_sums *s) {
  size_t d = fl__model_output_size(m);
  int err = fl__model_forward(m, b->x, n, b->out);
  for (size_t i = 0; err == FL_OK && i < n; i++) {
    const float *t = b->targets != NULL ? b->targets + i * d : b->x + i * d;
    double se = 0;
    for (size_t j = 0; j < d; j++) {
      double e = (double)b->out[i * d + j] - t[j];
      se += e * e;
    }
    bool alarm = se / (double)d > c->anomaly_threshold;
    s->anomalies += alarm;
    if (b->labels != NULL) {
      bool pos = b->labels[i] != 0;
      s->tp += alarm && pos;
      s->fp += alarm && !pos;
      s->fn += !alarm && pos;
    }
  }
  s->labelled |= b->labels != NULL;
  return err;
}

static int eval_pass(fl_client *c, fl_model *m, eval_bufs *b, bool anomalies, eval_sums *s) {
  const fl_data_source *src = &c->hold.src;
  int err = src->reset != NULL ? src->reset(src->ctx, 0) : FL_OK;
  while (err == FL_OK) {
    size_t n = 0;
    err = src->next(src->ctx, b->x, b->labels, b->targets, EVAL_BATCH, &n);
    if (err != FL_OK || n == 0)
      break;
    if (n > EVAL_BATCH)
      return FL_E_INVAL;
    bool ce = fl__model_spec(m)->loss == FL_LOSS_SOFTMAX_CE;
    fl_batch batch = {.x = b->x, .labels = ce ? b->labels : NULL, .targets = b->targets, .n = n};
    double loss = 0, acc = 0;
    err = fl__model_evaluate(m, &batch, &loss, &acc);
    if (err == FL_OK && anomalies)
      err = count_anomalies(c, m, b, n, s);
    s->loss += loss * (double)n;
    s->correct += acc * (double)n;
    s->n += n;
  }
  return err;
}

static int pack_report(fl_client *c, const fl_model *m, const eval_sums *s, bool anomalies) {
  Fl__V1__EvalReport rep;
  Fl__V1__Metric mt[5], *mp[5];
  fl__v1__eval_report__init(&rep);
  const char *names[5] = {"loss", "accuracy", "anomaly_rate", "precision", "recall"};
  double values[5] = {s->loss / (double)s->n, s->correct / (double)s->n,
                      s->anomalies / (double)s->n, s->tp / (s->tp + s->fp),
                      s->tp / (s->tp + s->fn)};
  /* Precision without an alarm and recall without an anomaly are undefined: not reported. */
  bool present[5] = {true, fl__model_spec(m)->loss == FL_LOSS_SOFTMAX_CE, anomalies,
                     anomalies && s->labelled && s->tp + s->fp > 0,
                     anomalies && s->labelled && s->tp + s->fn > 0};
  for (int i = 0; i < 5; i++) {
    if (!present[i])
      continue;
    if (!isfinite(values[i])) {
      fl__client_err(c, "evaluation gave a non-finite %s", names[i]);
      return FL_E_NONFINITE;
    }
    fl__v1__metric__init(&mt[rep.n_metrics]);
    mt[rep.n_metrics].name = (char *)names[i];
    mt[rep.n_metrics].value = values[i];
    mp[rep.n_metrics] = &mt[rep.n_metrics];
    rep.n_metrics++;
  }
  rep.metrics = mp;
  rep.model_id = c->eval.model_id;
  rep.version = c->eval.version;
  rep.gate_id = c->eval.gate_id;
  rep.campaign_id = c->eval.campaign_id;
  rep.sample_count = s->n;
  uint8_t buf[384]; /* six varints and five short metrics */
  size_t len = fl__v1__eval_report__get_packed_size(&rep);
  if (len > sizeof buf)
    return FL_E_TOOBIG;
  fl__v1__eval_report__pack(&rep, buf);
  return fl__request_set(c, "POST", "/v1/evaluations", buf, len);
}

int fl__eval_run(fl_client *c, fl__loaded_model *lm) {
  fl_model *m = lm->model;
  if (c->hold.src.x_dim != fl__model_input_size(m)) {
    fl__client_err(c, "hold-out data has %zu features, the model takes %zu", c->hold.src.x_dim,
                   fl__model_input_size(m));
    return FL_E_SHAPE;
  }
  bool anomalies = c->anomaly_threshold > 0 &&
                   fl__model_output_size(m) == fl__model_input_size(m) &&
                   fl__model_spec(m)->loss == FL_LOSS_MSE;
  eval_bufs b;
  eval_sums s = {0};
  int err = bufs_alloc(c, m, &b, anomalies);
  if (err != FL_OK)
    return err;
  err = eval_pass(c, m, &b, anomalies, &s);
  bufs_free(c->alloc, &b);
  if (err == FL_OK && s.n == 0) {
    fl__client_err(c, "the hold-out data yielded no examples");
    err = FL_E_STATE;
  }
  if (err == FL_OK)
    err = pack_report(c, m, &s, anomalies);
  if (err == FL_OK)
    c->result.eval_version = c->eval.version;
  return err;
}
