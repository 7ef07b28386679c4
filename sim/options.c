/*
 * Command line and config file of fl-sim. One table drives getopt, the config file and --help.
 */
#include "options.h"

#include <errno.h>
#include <getopt.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"
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
    {"threads", T_INT, O(threads), "worker threads driving them (2)"},
    {"rounds", T_INT, O(rounds), "training rounds (5)"},
    {"participants", T_U32, O(participants), "target updates per round (all devices)"},
    {"min-participants", T_U32, O(min_participants), "minimum to close at the deadline (50%)"},
    {"deadline", T_DBL, O(deadline_s), "round deadline in seconds (60)"},
    {"dataset", T_STR, O(dataset), "fmnist | synthetic | sensor (fmnist)"},
    {"data-dir", T_STR, O(data_dir), "Fashion-MNIST files (/usr/share/datasets/fashion-mnist)"},
    {"partition", T_STR, O(partition), "iid | dirichlet:ALPHA | shards:K (iid)"},
    {"samples-per-device", T_SIZE, O(samples_per_device),
     "fmnist examples per device (60; 0: all 60000 spread)"},
    {"synthetic-alpha", T_DBL, O(syn_alpha), "Synthetic(alpha, beta): alpha (1)"},
    {"synthetic-beta", T_DBL, O(syn_beta), "Synthetic(alpha, beta): beta (1)"},
    {"fault-rate", T_DBL, O(fault_rate), "sensor: faulty share of the held-out stream (0.1)"},
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
    {"dropout", T_DBL, O(dropout), "probability a selected device drops out (0)"},
    {"net-fail", T_DBL, O(net_fail), "probability an exchange fails in the network (0)"},
    {"stragglers", T_DBL, O(straggler_frac), "fraction of slow devices (0)"},
    {"straggler-ms", T_DBL, O(straggler_ms), "median upload delay of a slow device (2000)"},
    {"bad-devices", T_DBL, O(bad_frac), "fraction of misbehaving devices (0)"},
    {"bad-kinds", T_STR, O(bad_kinds), "poison,unclipped,badsig,replay (all)"},
    {"url", T_STR, O(url), "use this running coordinator instead of starting one"},
    {"admin-token", T_STR, O(admin_token), "admin token for --url (or FL_ADMIN_TOKEN)"},
    {"database-url", T_STR, O(database_url), "PostgreSQL for the started coordinator"},
    {"coordinator-bin", T_STR, O(coordinator_bin), "fl-coordinator to start"},
    {"coordinator-args", T_STR, O(coordinator_args),
     "more flags for the started coordinator, blank-separated (they win over fl-sim's)"},
    {"pg-bin", T_STR, O(pg_bin), "directory of initdb and pg_ctl"},
    {"work-dir", T_STR, O(work_dir), "device states and logs (a new temporary directory)"},
    {"keep-work-dir", T_FLAG, O(keep_work_dir), "do not delete the work directory"},
    {"out", T_STR, O(out_dir), "directory for rounds.csv, accuracy.svg/.png (fl-sim-out)"},
    {"seed", T_U64, O(seed), "seed of data, partitions and faults (1)"},
};
#define N_OPTS (sizeof(OPTS) / sizeof(OPTS[0]))

void sim_options_defaults(sim_options *o) {
  memset(o, 0, sizeof(*o));
  o->devices = 1000;
  o->threads = 2;
  o->rounds = 5;
  o->deadline_s = 60;
  o->dataset = "fmnist";
  o->data_dir = "/usr/share/datasets/fashion-mnist";
  o->partition = "iid";
  o->samples_per_device = 60;
  o->syn_alpha = 1;
  o->syn_beta = 1;
  o->fault_rate = 0.1;
  o->epochs = 1;
  o->batch = 10;
  o->lr = 0.05;
  o->clip_norm = 10;
  o->encoding = "float32";
  o->server_optimizer = "fedavg";
  o->server_lr = 1;
  o->straggler_ms = 2000;
  o->out_dir = "fl-sim-out";
  o->seed = 1;
}

void sim_options_usage(FILE *f) {
  fprintf(f, "usage: fl-sim [--config FILE] [options]\n\n"
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
  return FL_OK;
}

int sim_options_bad_kinds(const char *list) {
  static const char *names[] = {NULL, "poison", "unclipped", "badsig", "replay"};
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
