/* fl-sim --export-learning: what benches/fedavg_numpy.py reads back (sim/export.h). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "export.h"
#include "fl/err.h"
#include "model_specs.h"
#include "options.h"
#include "flsupport/proc.h"

static char dir[256];

static void make_dir(void) {
  cr_assert_eq(fl_sup_mkdtemp(dir, sizeof(dir), "sim-export-"), FL_OK);
}

static void *slurp(const char *name, size_t *len) {
  char path[512];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f, "%s", path);
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  rewind(f);
  void *p = malloc(*len + 1);
  cr_assert_eq(fread(p, 1, *len, f), *len);
  ((char *)p)[*len] = '\0';
  fclose(f);
  return p;
}

/* Three devices of 2, 0 and 3 examples; a 4-3-2 network: 4*3+3 + 3*2+2 = 23 parameters. */
Test(sim_export, writes_params_split_and_settings) {
  make_dir();
  sim_options o;
  sim_options_defaults(&o);
  o.rounds = 7;
  fl_model_spec spec;
  cr_assert_eq(sim_model_parse(&spec, "dense:3,relu,dense:2", 4, FL_LOSS_SOFTMAX_CE), FL_OK);
  float params[23];
  for (int i = 0; i < 23; i++)
    params[i] = (float)i * 0.5f - 3.0f;
  size_t offsets[4] = {0, 2, 2, 5};
  uint32_t index[5] = {9, 4, 7, 0, 59999};
  sim_partition part = {.n_parties = 3, .offsets = offsets, .index = index};
  char msg[256] = "";
  cr_assert_eq(sim_export_learning(dir, &o, &spec, params, 23, &part, msg, sizeof(msg)), FL_OK,
               "%s", msg);

  size_t len;
  float *p = slurp("params.f32", &len);
  cr_assert_eq(len, sizeof(params));
  cr_assert_arr_eq(p, params, sizeof(params));
  free(p);
  uint32_t *s = slurp("split.u32", &len);
  uint32_t want[] = {3, 0, 2, 2, 5, 9, 4, 7, 0, 59999};
  cr_assert_eq(len, sizeof(want));
  cr_assert_arr_eq(s, want, sizeof(want));
  free(s);
  char *t = slurp("learning.txt", &len);
  cr_assert(strstr(t, "dims 4,3,2\n") != NULL, "%s", t);
  cr_assert(strstr(t, "n_params 23\n") != NULL, "%s", t);
  cr_assert(strstr(t, "epochs 1\nbatch 10\nlr 0.05") != NULL, "%s", t);
  cr_assert(strstr(t, "rounds 7\n") != NULL, "%s", t);
  free(t);
  fl_sup_rmtree(dir);
}

/* Work the numpy side would not do the same way is refused, and nothing is written. */
Test(sim_export, refuses_what_it_does_not_describe) {
  make_dir();
  sim_options o;
  sim_options_defaults(&o);
  fl_model_spec dense, tanh_net;
  cr_assert_eq(sim_model_parse(&dense, "dense:3,relu,dense:2", 4, FL_LOSS_SOFTMAX_CE), FL_OK);
  cr_assert_eq(sim_model_parse(&tanh_net, "dense:3,tanh,dense:2", 4, FL_LOSS_SOFTMAX_CE), FL_OK);
  float params[23] = {0};
  size_t offsets[2] = {0, 1};
  uint32_t index[1] = {0};
  sim_partition part = {.n_parties = 1, .offsets = offsets, .index = index};
  char msg[256] = "";
  cr_assert_eq(sim_export_learning(dir, &o, &tanh_net, params, 23, &part, msg, sizeof(msg)),
               FL_E_INVAL);
  cr_assert(strstr(msg, "dense layers") != NULL, "%s", msg);
  o.momentum = 0.9;
  cr_assert_eq(sim_export_learning(dir, &o, &dense, params, 23, &part, msg, sizeof(msg)),
               FL_E_INVAL);
  cr_assert(strstr(msg, "--momentum") != NULL, "%s", msg);
  o.momentum = 0;
  o.encoding = "int8";
  cr_assert_eq(sim_export_learning(dir, &o, &dense, params, 23, &part, msg, sizeof(msg)),
               FL_E_INVAL);
  char path[512];
  snprintf(path, sizeof(path), "%s/params.f32", dir);
  cr_assert_null(fopen(path, "rb"), "nothing written");
  fl_sup_rmtree(dir);
}
