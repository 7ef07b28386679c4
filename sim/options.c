/*
 * Command line and config file of fl-sim. One table drives getopt, the config file and --help.
 */
#include "options.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"
#include "mix.h"
#include "model_specs.h"
#include "mqtt.h"
#include "partition.h"
#include "transport.h"

typedef enum { T_SIZE, T_INT, T_U32, T_DBL, T_STR, T_U64, T_FLAG } opt_type;

typedef struct opt_def {
  const char *name;
  opt_type type;
  size_t off;
  const char *help;
} opt_def;

#define O(field) offsetof(sim_options, field)
static const opt_def OPTS[] = {
    {"devices", T_SIZE, O(devices), "virtual devices (1000)"},
    {"threads", T_INT, O(threads), "worker threads driving their network (2)"},
    {"train-threads", T_INT, O(train_threads), "threads training them (0: one per CPU)"},
    {"max-inflight", T_INT, O(max_inflight),
     "exchanges in flight at once, all workers together (256; the coordinator fl-sim starts "
     "takes 512 connections)"},
    {"rounds", T_INT, O(rounds), "training rounds (5)"},
    {"participants", T_U32, O(participants), "target updates per round (all devices)"},
    {"min-participants", T_U32, O(min_participants), "minimum to close at the deadline (50%)"},
    {"over-selection", T_DBL, O(over_selection),
     "devices given a task per target update, in [1, 10] (1.3)"},
    {"selection-window", T_DBL, O(selection_window_s),
     "seconds a round collects candidates before it draws its participants uniformly; 0: first "
     "come, first served (1 when --participants is below --devices, else 0)"},
    {"deadline", T_DBL, O(deadline_s), "round deadline in seconds (60)"},
    {"dataset", T_STR, O(dataset),
     "fmnist | synthetic | sensor | sensor2 (sensor2: spectra where learning matters; fmnist)"},
    {"data-dir", T_STR, O(data_dir), "Fashion-MNIST files (/usr/share/datasets/fashion-mnist)"},
    {"partition", T_STR, O(partition),
     "iid | dirichlet:ALPHA | shards:K | labels:K (K classes per device, as NIID-Bench #C=K) "
     "(iid)"},
    {"samples-per-device", T_SIZE, O(samples_per_device),
     "fmnist examples per device (60; 0: all 60000 spread)"},
    {"synthetic-alpha", T_DBL, O(syn_alpha), "Synthetic(alpha, beta): alpha (1)"},
    {"synthetic-beta", T_DBL, O(syn_beta), "Synthetic(alpha, beta): beta (1)"},
    {"fault-rate", T_DBL, O(fault_rate), "sensor: faulty share of the held-out stream (0.1)"},
    {"drift-round", T_INT, O(drift_round),
     "sensor2: the round from which the drifted motors' data (training and held-out) is shifted "
     "(0: no drift)"},
    {"drift-share", T_DBL, O(drift_share), "sensor2: share of the motors that drift (0.3)"},
    {"drift-kind", T_STR, O(drift_kind),
     "sensor2: wear (bearing wear: higher harmonics, broad lines, slower rotor) | machine (a "
     "new machine type) (wear)"},
    {"drift-detect", T_FLAG, O(drift_detect),
     "sensor2: devices send service statistics of their held-out stream with every check-in and "
     "the coordinator tests each site for drift (docs/DRIFT.md); the drifted motors are one site"},
    {"psi-threshold", T_DBL, O(psi_threshold), "--drift-detect: the plan's psi_threshold (0.25)"},
    {"retrain-rounds", T_INT, O(retrain_rounds),
     "--drift-detect: a drifted site gets a retraining plan of this many rounds beside the "
     "plan, whose version is rolled out to the site, staged and gated (0: no retraining)"},
    {"model", T_STR, O(model), "logreg | mlp | 2nn | cnn | autoencoder (2nn; sensor: autoencoder)"},
    {"layers", T_STR, O(layers), "layer list instead of --model, e.g. dense:64,relu,dense:10"},
    {"epochs", T_U32, O(epochs), "local epochs (1)"},
    {"batch", T_U32, O(batch), "local batch size (10)"},
    {"lr", T_DBL, O(lr), "local learning rate (0.05)"},
    {"momentum", T_DBL, O(momentum), "local SGD momentum (0)"},
    {"weight-decay", T_DBL, O(weight_decay), "local weight decay (0)"},
    {"prox-mu", T_DBL, O(prox_mu), "FedProx mu (0)"},
    {"clip-norm", T_DBL, O(clip_norm), "L2 bound of an update (10)"},
    {"encoding", T_STR, O(encoding), "float32 | float16 | int8 | topk (float32)"},
    {"server-optimizer", T_STR, O(server_optimizer), "fedavg | fedavgm | fedadam | fedyogi"},
    {"server-lr", T_DBL, O(server_lr), "server learning rate (1)"},
    {"mode", T_STR, O(mode), "sync | async: FedBuff buffers instead of rounds (sync)"},
    {"buffer-size", T_U32, O(buffer_size),
     "async: updates per version K (0: --participants, else --devices)"},
    {"max-staleness", T_U32, O(max_staleness), "async: oldest base accepted, in versions (4)"},
    {"dropout", T_DBL, O(dropout), "probability a selected device drops out (0)"},
    {"offline-share", T_DBL, O(offline_share),
     "share of intermittent devices: offline with probability 1/2 after taking a task (holding "
     "it) and after finishing one (0)"},
    {"offline-mean", T_DBL, O(offline_mean_s),
     "mean seconds of an offline period, exponential (10)"},
    {"net-fail", T_DBL, O(net_fail), "probability an exchange fails in the network (0)"},
    {"stragglers", T_DBL, O(straggler_frac), "fraction of slow devices (0)"},
    {"straggler-ms", T_DBL, O(straggler_ms), "median upload delay of a slow device (2000)"},
    {"bad-devices", T_DBL, O(bad_frac), "fraction of misbehaving devices (0)"},
    {"bad-kinds", T_STR, O(bad_kinds),
     "poison,unclipped,badsig,replay (default: these four), or the in-bound attacks"
     " signflip,scaled,lie,labelflip,noise"},
    {"aggregator", T_STR, O(aggregator),
     "fedavg | median | trimmed_mean | krum | multi_krum | bulyan (fedavg)"},
    {"trim-fraction", T_DBL, O(trim_fraction), "trimmed_mean: fraction cut per side (0)"},
    {"byzantine", T_U32, O(byzantine), "krum, multi_krum, bulyan: assumed attackers f (0)"},
    {"krum-select", T_U32, O(krum_select), "multi_krum: updates averaged m (0)"},
    {"noise-multiplier", T_DBL, O(noise_multiplier),
     "DP-FedAvg: central noise multiplier z (0: not private; docs/PRIVACY.md)"},
    {"clip-quantile", T_DBL, O(clip_quantile),
     "adaptive clipping: target quantile of unclipped updates (0: fixed --clip-norm)"},
    {"labels", T_STR, O(labels),
     "device labels with shares, e.g. site=a:0.5,site=b:0.5 (each device gets one or none)"},
    {"conditions", T_STR, O(conditions),
     "conditions devices report at each check-in with a probability, e.g. charging:0.7"},
    {"cohort", T_STR, O(cohort),
     "the plan's training cohort, JSON, e.g. {\"labels\":{\"site\":\"a\"},"
     "\"conditions\":[\"charging\"]}"},
    {"eval-share", T_DBL, O(eval_share),
     "evaluate every new version on this share of the cohort (0: no evaluation)"},
    {"eval-count", T_U32, O(eval_count), "evaluate every new version on this many devices"},
    {"eval-by", T_STR, O(eval_by), "federated evaluation results per value of this label"},
    {"secure-aggregation", T_STR, O(secure_aggregation),
     "T:K: SecAgg+ with threshold T of K neighbours (docs/SECAGG.md; needs --clip-norm)"},
    {"secagg-drop", T_STR, O(secagg_drop),
     "phase:fraction,...: devices that drop out at keys, shares, masked or unmask"},
    {"url", T_STR, O(url), "use this running coordinator instead of starting one"},
    {"admin-token", T_STR, O(admin_token), "admin token for --url (or FL_ADMIN_TOKEN)"},
    {"database-url", T_STR, O(database_url), "PostgreSQL for the started coordinator"},
    {"coordinator-bin", T_STR, O(coordinator_bin), "fl-coordinator to start"},
    {"coordinator-args", T_STR, O(coordinator_args),
     "more flags for the started coordinator, blank-separated (they win over fl-sim's)"},
    {"transport", T_STR, O(transport), "http | mqtt: how the devices reach the coordinator (http)"},
    {"broker", T_STR, O(broker),
     "--transport mqtt: mqtt://PREFIX:PASSWORD@host:port; device k logs in as PREFIX%05k "
     "(password also from FL_SIM_MQTT_PASSWORD)"},
    {"bridge-bin", T_STR, O(bridge_bin),
     "--transport mqtt: start this fl-mqtt-bridge against the coordinator (broker account "
     "fl-bridge, password from FL_MQTT_BRIDGE_PASSWORD); without it one must be running"},
    {"model-name", T_STR, O(model_name), "model name on the coordinator (a new one each run)"},
    {"pg-bin", T_STR, O(pg_bin), "directory of initdb and pg_ctl"},
    {"work-dir", T_STR, O(work_dir), "device states and logs (a new temporary directory)"},
    {"keep-work-dir", T_FLAG, O(keep_work_dir), "do not delete the work directory"},
    {"out", T_STR, O(out_dir), "directory for rounds.csv, accuracy.svg/.png (fl-sim-out)"},
    {"seed", T_U64, O(seed), "seed of data, partitions and faults (1)"},
    {"export-learning", T_STR, O(export_dir),
     "write the initial model, the data split and the training settings to this directory "
     "(for benches/fedavg_numpy.py)"},
};
#define N_OPTS (sizeof(OPTS) / sizeof(OPTS[0]))

void sim_options_defaults(sim_options *o) {
  memset(o, 0, sizeof(*o));
  o->devices = 1000;
  o->threads = 2;
  o->max_inflight = 256;
  o->rounds = 5;
  o->over_selection = 1.3;
  o->selection_window_s = -1;
  o->deadline_s = 60;
  o->dataset = "fmnist";
  o->data_dir = "/usr/share/datasets/fashion-mnist";
  o->partition = "iid";
  o->samples_per_device = 60;
  o->syn_alpha = 1;
  o->syn_beta = 1;
  o->fault_rate = 0.1;
  o->drift_share = 0.3;
  o->drift_kind = "wear";
  o->psi_threshold = 0.25;
  o->epochs = 1;
  o->batch = 10;
  o->lr = 0.05;
  o->clip_norm = 10;
  o->encoding = "float32";
  o->server_optimizer = "fedavg";
  o->aggregator = "fedavg";
  o->server_lr = 1;
  o->straggler_ms = 2000;
  o->mode = "sync";
  o->max_staleness = 4;
  o->offline_mean_s = 10;
  o->out_dir = "fl-sim-out";
  o->transport = "http";
  o->seed = 1;
}

void sim_options_usage(FILE *f) {
  fprintf(f,
          "usage: fl-sim [--config FILE] [options]\n\n"
          "Runs a fleet of virtual devices with libflclient against a real coordinator.\n\n");
  for (size_t i = 0; i < N_OPTS; i++) {
    char left[48];
    snprintf(left, sizeof(left), "--%s%s", OPTS[i].name, OPTS[i].type == T_FLAG ? "" : "=V");
    fprintf(f, "  %-26s %s\n", left, OPTS[i].help);
  }
}

static int set_value(sim_options *o, const opt_def *d, const char *v) {
  char *end = NULL;
  void *p = (char *)o + d->off;
  errno = 0;
  switch (d->type) {
    case T_STR:
      *(const char **)p = v;
      return FL_OK;
    case T_FLAG:
      *(int *)p = 1;
      return FL_OK;
    case T_DBL:
      *(double *)p = strtod(v, &end);
      break;
    default: {
      if (*v == '-')
        return FL_E_INVAL;
      unsigned long long n = strtoull(v, &end, 10);
      if (d->type == T_SIZE)
        *(size_t *)p = (size_t)n;
      else if (d->type == T_U64)
        *(uint64_t *)p = n;
      else if (n > INT32_MAX)
        return FL_E_INVAL;
      else if (d->type == T_INT)
        *(int *)p = (int)n;
      else
        *(uint32_t *)p = (uint32_t)n;
    }
  }
  return errno == 0 && end != v && *end == '\0' ? FL_OK : FL_E_INVAL;
}

static const opt_def *find(const char *name) {
  for (size_t i = 0; i < N_OPTS; i++)
    if (strcmp(OPTS[i].name, name) == 0)
      return &OPTS[i];
  return NULL;
}

/* Strips blanks at both ends in place. */
static char *trim(char *s) {
  while (*s == ' ' || *s == '\t')
    s++;
  char *e = s + strlen(s);
  while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
    *--e = '\0';
  return s;
}

static int load_config(sim_options *o, const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    fprintf(stderr, "fl-sim: cannot open %s\n", path);
    return FL_E_INVAL;
  }
  char line[1024];
  int rc = FL_OK, no = 0;
  while (rc == FL_OK && fgets(line, sizeof(line), f) != NULL) {
    no++;
    char *hash = strchr(line, '#');
    if (hash)
      *hash = '\0';
    char *s = trim(line);
    if (*s == '\0')
      continue;
    char *eq = strchr(s, '=');
    const opt_def *d = NULL;
    if (eq != NULL) {
      *eq = '\0';
      d = find(trim(s));
    }
    /* Values must outlive the file: they are kept for the life of the process. */
    char *v = eq && d ? strdup(trim(eq + 1)) : NULL;
    if (v == NULL || set_value(o, d, v) != FL_OK) {
      fprintf(stderr, "fl-sim: %s:%d: not an option line\n", path, no);
      rc = FL_E_INVAL;
    }
  }
  fclose(f);
  return rc;
}

int sim_options_parse(sim_options *o, int argc, char **argv) {
  struct option lo[N_OPTS + 3];
  for (size_t i = 0; i < N_OPTS; i++)
    lo[i] = (struct option){OPTS[i].name, OPTS[i].type == T_FLAG ? no_argument : required_argument,
                            NULL, (int)(1000 + i)};
  lo[N_OPTS] = (struct option){"config", required_argument, NULL, 'c'};
  lo[N_OPTS + 1] = (struct option){"help", no_argument, NULL, 'h'};
  lo[N_OPTS + 2] = (struct option){0, 0, 0, 0};
  /* The file first, so that flags override it. */
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strncmp(a, "--config=", 9) == 0 && load_config(o, a + 9) != FL_OK)
      return FL_E_INVAL;
    if (strcmp(a, "--config") == 0 && i + 1 < argc && load_config(o, argv[i + 1]) != FL_OK)
      return FL_E_INVAL;
  }
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "c:h", lo, NULL)) != -1) {
    if (c == 'h') {
      sim_options_usage(stdout);
      return 1;
    }
    if (c == 'c')
      continue;
    if (c < 1000 || c >= 1000 + (int)N_OPTS) {
      sim_options_usage(stderr);
      return FL_E_INVAL;
    }
    const opt_def *d = &OPTS[c - 1000];
    if (set_value(o, d, optarg ? optarg : "") != FL_OK) {
      fprintf(stderr, "fl-sim: bad value for --%s: %s\n", d->name, optarg ? optarg : "");
      return FL_E_INVAL;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "fl-sim: unexpected argument %s\n", argv[optind]);
    return FL_E_INVAL;
  }
  char msg[256];
  if (sim_options_check(o, msg, sizeof(msg)) != FL_OK) {
    fprintf(stderr, "fl-sim: %s\n", msg);
    return FL_E_INVAL;
  }
  return FL_OK;
}

int sim_options_bad_kinds(const char *list) {
  static const char *names[] = {NULL,       "poison", "unclipped", "badsig",    "replay",
                                "signflip", "scaled", "lie",       "labelflip", "noise"};
  if (list == NULL || *list == '\0')
    return 0;
  int mask = 0;
  const char *p = list;
  while (*p) {
    size_t len = strcspn(p, ",");
    int found = 0;
    for (int k = 1; k < SIM_BEHAVIOUR_COUNT; k++)
      if (strlen(names[k]) == len && strncmp(p, names[k], len) == 0) {
        mask |= 1 << k;
        found = 1;
      }
    if (!found)
      return -1;
    p += len + (p[len] == ',');
  }
  return mask;
}

/* ---- validation ------------------------------------------------------------------------- */

/* Fashion-MNIST's training set: what --samples-per-device draws from. */
#define FMNIST_TRAIN 60000

int sim_scenario_shape(const char *dataset, sim_scenario *out) {
  if (dataset != NULL && strcmp(dataset, "fmnist") == 0)
    *out = (sim_scenario){784, 10};
  else if (dataset != NULL && strcmp(dataset, "synthetic") == 0)
    *out = (sim_scenario){60, 10};
  else if (dataset != NULL && (strcmp(dataset, "sensor") == 0 || strcmp(dataset, "sensor2") == 0))
    *out = (sim_scenario){64, 0};
  else
    return FL_E_INVAL;
  return FL_OK;
}

static int fail(char *msg, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *msg, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, cap, fmt, ap);
  va_end(ap);
  return FL_E_INVAL;
}

int sim_options_model(const sim_options *o, const sim_scenario *sc, fl_model_spec *out, char *msg,
                      size_t cap) {
  int classifier = sc->n_classes > 0;
  const char *name = o->model ? o->model : classifier ? "2nn" : "autoencoder";
  int rc;
  if (o->layers != NULL) {
    rc = sim_model_parse(out, o->layers, sc->x_dim, classifier ? FL_LOSS_SOFTMAX_CE : FL_LOSS_MSE);
    if (rc != FL_OK)
      return fail(msg, cap, "bad --layers %s: %s", o->layers, fl_strerror(rc));
  } else {
    static const char *const known[] = {"logreg", "mlp", "2nn", "cnn", "autoencoder"};
    int is_known = 0;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
      is_known |= strcmp(name, known[i]) == 0;
    if (!is_known)
      return fail(msg, cap, "unknown --model %s: logreg, mlp, 2nn, cnn or autoencoder", name);
    if (sim_model_named(out, name, sc->x_dim, sc->n_classes) != FL_OK)
      return fail(msg, cap, "--model %s cannot take the data of --dataset %s (%zu inputs%s)", name,
                  o->dataset, sc->x_dim, classifier ? "" : ", no classes");
    if ((out->loss == FL_LOSS_SOFTMAX_CE) != classifier)
      return fail(msg, cap, "--model %s does not suit --dataset %s: it needs %s", name, o->dataset,
                  classifier ? "a classifier" : "an autoencoder");
  }
  rc = fl__spec_validate(out);
  if (rc != FL_OK)
    return fail(msg, cap, "the model does not fit the %zu inputs of --dataset %s: %s", sc->x_dim,
                o->dataset, fl_strerror(rc));
  fl_model *m = NULL;
  rc = fl__model_new(&m, out, NULL);
  if (rc != FL_OK)
    return fail(msg, cap, "cannot build the model: %s", fl_strerror(rc));
  size_t n_out = fl__model_output_size(m), want = classifier ? (size_t)sc->n_classes : sc->x_dim;
  fl__model_free(m);
  if (n_out != want)
    return fail(msg, cap, "the model's output layer has %zu units; --dataset %s needs %zu (%s)",
                n_out, o->dataset, want, classifier ? "one per class" : "the input size");
  return FL_OK;
}

typedef struct range_check {
  const char *name;
  double v, lo, hi;
} range_check;

/* The numbers with a range; the plan's ranges are the coordinator's (server/rounds/plan.c). */
static int check_ranges(const sim_options *o, char *msg, size_t cap) {
  const range_check R[] = {
      {"devices", (double)o->devices, 1, 1e6},
      {"threads", o->threads, 1, 256},
      {"train-threads", o->train_threads, 0, 256},
      {"max-inflight", o->max_inflight, 1, 65536},
      {"rounds", o->rounds, 1, 1e6},
      {"participants", o->participants, 0, 1e6},
      {"min-participants", o->min_participants, 0, 1e6},
      {"over-selection", o->over_selection, 1, 10},
      {"selection-window", o->selection_window_s < 0 ? 0 : o->selection_window_s, 0, 3600},
      {"deadline", o->deadline_s, 1, 7 * 86400},
      {"epochs", o->epochs, 1, 1000},
      {"batch", o->batch, 1, 1e6},
      {"lr", o->lr, 0, 100},
      {"momentum", o->momentum, 0, 1},
      {"weight-decay", o->weight_decay, 0, 1},
      {"prox-mu", o->prox_mu, 0, 1e3},
      {"clip-norm", o->clip_norm, 0, 1e9},
      {"server-lr", o->server_lr, 1e-9, 1e3},
      {"dropout", o->dropout, 0, 1},
      {"net-fail", o->net_fail, 0, 0.99}, /* 1 would fail every exchange, enrollment too */
      {"stragglers", o->straggler_frac, 0, 1},
      {"offline-share", o->offline_share, 0, 1},
      {"offline-mean", o->offline_mean_s, 0, 86400},
      {"buffer-size", o->buffer_size, 0, 1e6},
      {"max-staleness", o->max_staleness, 0, 1e6},
      {"straggler-ms", o->straggler_ms, 0, 3600e3},
      {"bad-devices", o->bad_frac, 0, 1},
      {"synthetic-alpha", o->syn_alpha, 0, 1e3},
      {"synthetic-beta", o->syn_beta, 0, 1e3},
      {"fault-rate", o->fault_rate, 0, 1},
      {"drift-round", o->drift_round, 0, 1e6},
      {"drift-share", o->drift_share, 0, 1},
      {"psi-threshold", o->psi_threshold, 0.001, 100},
      {"retrain-rounds", o->retrain_rounds, 0, 1e5},
      {"trim-fraction", o->trim_fraction, 0, 0.4999999},
      {"noise-multiplier", o->noise_multiplier, 0, 1e3},
      {"clip-quantile", o->clip_quantile, 0, 1},
      {"eval-share", o->eval_share, 0, 1},
      {"eval-count", o->eval_count, 0, 1e6},
  };
  for (size_t i = 0; i < sizeof(R) / sizeof(R[0]); i++)
    if (!isfinite(R[i].v) || R[i].v < R[i].lo || R[i].v > R[i].hi)
      return fail(msg, cap, "--%s must be in [%g, %g], not %g", R[i].name, R[i].lo, R[i].hi,
                  R[i].v);
  if (o->deadline_s != floor(o->deadline_s))
    return fail(msg, cap, "--deadline must be whole seconds, not %g", o->deadline_s);
  return FL_OK;
}

/* Counts against each other: participants, devices, threads, misbehaving devices. */
static int check_fleet(const sim_options *o, char *msg, size_t cap) {
  if ((size_t)o->threads > o->devices)
    return fail(msg, cap, "--threads %d exceeds --devices %zu", o->threads, o->devices);
  if (o->participants > o->devices)
    return fail(msg, cap, "--participants %u exceeds --devices %zu", o->participants, o->devices);
  size_t target = o->participants ? o->participants : o->devices;
  if (o->min_participants > target)
    return fail(msg, cap, "--min-participants %u exceeds the %zu participants", o->min_participants,
                target);
  bool async = o->mode != NULL && strcmp(o->mode, "async") == 0;
  if (o->mode == NULL || (!async && strcmp(o->mode, "sync") != 0))
    return fail(msg, cap, "bad --mode %s: sync or async", o->mode ? o->mode : "");
  if (!async && o->buffer_size > 0)
    return fail(msg, cap, "--buffer-size needs --mode async");
  if (o->buffer_size > o->devices)
    return fail(msg, cap, "--buffer-size %u exceeds --devices %zu", o->buffer_size, o->devices);
  if (async && o->selection_window_s > 0)
    return fail(msg, cap, "--mode async has no --selection-window (devices train at any time)");
  size_t n_bad = (size_t)(o->bad_frac * (double)o->devices + 0.5);
  if (n_bad >= o->devices)
    return fail(msg, cap, "--bad-devices %g leaves no honest device (one downloads the versions)",
                o->bad_frac);
  if (sim_options_bad_kinds(o->bad_kinds) < 0)
    return fail(msg, cap,
                "bad --bad-kinds %s: poison, unclipped, badsig, replay, signflip, scaled, lie,"
                " labelflip, noise",
                o->bad_kinds);
  return FL_OK;
}

/* Labels, conditions, the cohort's JSON (the coordinator checks its fields) and the
 * evaluation policy. */
static int check_cohort(const sim_options *o, char *msg, size_t cap) {
  sim_mix m;
  if (sim_mix_parse_labels(&m, o->labels, msg, cap) ||
      sim_mix_parse_conditions(&m, o->conditions, msg, cap))
    return FL_E_INVAL;
  json_t *j = o->cohort != NULL ? json_loads(o->cohort, 0, NULL) : NULL;
  bool ok = o->cohort == NULL || json_is_object(j);
  json_decref(j);
  if (!ok)
    return fail(msg, cap, "--cohort must be a JSON object");
  if (o->eval_share > 0 && o->eval_count > 0)
    return fail(msg, cap, "--eval-share and --eval-count exclude each other");
  if (o->drift_detect && o->labels != NULL)
    return fail(msg, cap, "--labels and --drift-detect exclude each other (it labels by site)");
  if (o->eval_by != NULL && o->eval_share <= 0 && o->eval_count == 0)
    return fail(msg, cap, "--eval-by needs --eval-share or --eval-count");
  return FL_OK;
}

static int check_names(const sim_options *o, char *msg, size_t cap) {
  static const char *const encodings[] = {"float32", "float16", "int8", "topk"};
  static const char *const optimizers[] = {"fedavg", "fedavgm", "fedadam", "fedyogi"};
  int ok_enc = 0, ok_opt = 0;
  for (int i = 0; i < 4; i++) {
    ok_enc |= o->encoding != NULL && strcmp(o->encoding, encodings[i]) == 0;
    ok_opt |= o->server_optimizer != NULL && strcmp(o->server_optimizer, optimizers[i]) == 0;
  }
  if (!ok_enc)
    return fail(msg, cap, "bad --encoding %s: float32, float16, int8 or topk", o->encoding);
  if (!ok_opt)
    return fail(msg, cap, "bad --server-optimizer %s: fedavg, fedavgm, fedadam or fedyogi",
                o->server_optimizer);
  static const char *const aggregators[] = {"fedavg", "median",     "trimmed_mean",
                                            "krum",   "multi_krum", "bulyan"};
  int ok_agg = 0;
  for (int i = 0; i < 6; i++)
    ok_agg |= o->aggregator != NULL && strcmp(o->aggregator, aggregators[i]) == 0;
  if (!ok_agg)
    return fail(msg, cap,
                "bad --aggregator %s: fedavg, median, trimmed_mean, krum, multi_krum or bulyan",
                o->aggregator ? o->aggregator : "");
  sim_partition_scheme ps;
  if (sim_partition_scheme_parse(&ps, o->partition) != FL_OK)
    return fail(msg, cap, "bad --partition %s: iid, dirichlet:ALPHA, shards:K or labels:K",
                o->partition);
  if (o->model_name != NULL && (o->model_name[0] == '\0' || strlen(o->model_name) > 200))
    return fail(msg, cap, "--model-name must have 1 to 200 characters");
  if (o->out_dir == NULL || o->out_dir[0] == '\0')
    return fail(msg, cap, "--out must name a directory");
  if (strcmp(o->transport, "http") != 0 && strcmp(o->transport, "mqtt") != 0)
    return fail(msg, cap, "unknown --transport %s: http or mqtt", o->transport);
  sim_mqtt_broker mb;
  if (strcmp(o->transport, "mqtt") == 0 && sim_mqtt_parse(o->broker, &mb, msg, cap) != FL_OK)
    return FL_E_INVAL;
  if (strcmp(o->transport, "mqtt") != 0 && (o->broker != NULL || o->bridge_bin != NULL))
    return fail(msg, cap, "--broker and --bridge-bin go with --transport mqtt");
  if (o->url != NULL && o->admin_token == NULL && getenv("FL_ADMIN_TOKEN") == NULL)
    return fail(msg, cap, "--url needs --admin-token or FL_ADMIN_TOKEN");
  return check_cohort(o, msg, cap);
}

int sim_secagg_parse(const sim_options *o, uint32_t *t, uint32_t *k, double drop[SIM_SA_PHASES],
                     char *msg, size_t cap) {
  static const char *const phases[SIM_SA_PHASES] = {"keys", "shares", "masked", "unmask"};
  unsigned a = 0, b = 0;
  char tail;
  *t = *k = 0;
  for (int i = 0; i < SIM_SA_PHASES; i++)
    drop[i] = 0;
  if (o->secure_aggregation != NULL &&
      (sscanf(o->secure_aggregation, "%u:%u%c", &a, &b, &tail) != 2 || a == 0 || b < a))
    return fail(msg, cap, "bad --secure-aggregation %s: T:K with 1 <= T <= K",
                o->secure_aggregation);
  *t = a;
  *k = b;
  for (const char *p = o->secagg_drop; p != NULL && *p != '\0';) {
    const char *colon = strchr(p, ':');
    int ph = -1;
    for (int i = 0; colon != NULL && i < SIM_SA_PHASES; i++)
      if ((size_t)(colon - p) == strlen(phases[i]) && strncmp(p, phases[i], strlen(phases[i])) == 0)
        ph = i;
    char *end = NULL;
    double f = ph >= 0 ? strtod(colon + 1, &end) : -1;
    if (ph < 0 || end == colon + 1 || !(f >= 0 && f <= 1) || (*end != ',' && *end != '\0') ||
        (*end == ',' && end[1] == '\0'))
      return fail(msg, cap,
                  "bad --secagg-drop %s: phase:fraction,... (keys, shares, masked,"
                  " unmask; fractions in [0, 1])",
                  o->secagg_drop);
    drop[ph] = f;
    p = *end == ',' ? end + 1 : end;
  }
  if (o->secagg_drop != NULL && a == 0)
    return fail(msg, cap, "--secagg-drop needs --secure-aggregation");
  return FL_OK;
}

int sim_options_check(const sim_options *o, char *msg, size_t cap) {
  sim_scenario sc;
  uint32_t sa_t, sa_k;
  double sa_drop[SIM_SA_PHASES];
  if (sim_scenario_shape(o->dataset, &sc) != FL_OK)
    return fail(msg, cap, "unknown --dataset %s: fmnist, synthetic, sensor or sensor2", o->dataset);
  int rc = check_ranges(o, msg, cap);
  if (rc == FL_OK)
    rc = sim_secagg_parse(o, &sa_t, &sa_k, sa_drop, msg, cap);
  if (rc == FL_OK)
    rc = check_fleet(o, msg, cap);
  if (rc == FL_OK)
    rc = check_names(o, msg, cap);
  if (rc != FL_OK)
    return rc;
  if (strcmp(o->dataset, "fmnist") == 0) {
    size_t per = o->samples_per_device;
    if (per > FMNIST_TRAIN / o->devices || (per == 0 && o->devices > FMNIST_TRAIN))
      return fail(msg, cap, "%zu devices x %zu examples exceed the %d Fashion-MNIST examples",
                  o->devices, per ? per : 1, FMNIST_TRAIN);
  }
  if (o->drift_round > 0 && strcmp(o->dataset, "sensor2") != 0)
    return fail(msg, cap, "--drift-round needs --dataset sensor2");
  if (o->drift_round > 0 && o->drift_round > o->rounds)
    return fail(msg, cap, "--drift-round %d is past the last round (--rounds %d)", o->drift_round,
                o->rounds);
  if ((o->drift_detect || o->retrain_rounds > 0) && o->drift_round == 0)
    return fail(msg, cap, "--drift-detect and --retrain-rounds need --drift-round");
  if (o->retrain_rounds > 0 && !o->drift_detect)
    return fail(msg, cap, "--retrain-rounds needs --drift-detect");
  /* The retraining runs beside the plan from the round after the drift is detected: it must
   * fit before the run ends. */
  if (o->retrain_rounds > 0 && o->rounds - o->retrain_rounds < o->drift_round)
    return fail(msg, cap, "--retrain-rounds %d do not fit between --drift-round %d and --rounds %d",
                o->retrain_rounds, o->drift_round, o->rounds);
  if (o->drift_kind == NULL ||
      (strcmp(o->drift_kind, "wear") != 0 && strcmp(o->drift_kind, "machine") != 0))
    return fail(msg, cap, "bad --drift-kind %s: wear or machine",
                o->drift_kind ? o->drift_kind : "");
  fl_model_spec spec;
  return sim_options_model(o, &sc, &spec, msg, cap);
}
