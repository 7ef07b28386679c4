/*
 * Named model specifications and the layer-list parser.
 */
#include "model_specs.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"

static const struct {
  int type;
  const char *name;
} layer_names[] = {
    {FL_LAYER_DENSE, "dense"},     {FL_LAYER_CONV2D, "conv2d"}, {FL_LAYER_MAXPOOL2D, "maxpool2d"},
    {FL_LAYER_FLATTEN, "flatten"}, {FL_LAYER_RELU, "relu"},     {FL_LAYER_SIGMOID, "sigmoid"},
    {FL_LAYER_TANH, "tanh"},
};

const char *sim_layer_name(int type) {
  for (size_t i = 0; i < sizeof(layer_names) / sizeof(layer_names[0]); i++)
    if (layer_names[i].type == type)
      return layer_names[i].name;
  return NULL;
}

static int layer_type(const char *name, size_t len) {
  for (size_t i = 0; i < sizeof(layer_names) / sizeof(layer_names[0]); i++)
    if (strlen(layer_names[i].name) == len && strncmp(layer_names[i].name, name, len) == 0)
      return layer_names[i].type;
  return 0;
}

/* Side of a one-channel square image of x_dim pixels, or 0 when x_dim is not a square. */
static uint32_t square_side(size_t x_dim) {
  uint32_t s = (uint32_t)lround(sqrt((double)x_dim));
  return (size_t)s * s == x_dim ? s : 0;
}

static void set_input(fl_model_spec *m, size_t x_dim, int image) {
  if (image) {
    uint32_t s = square_side(x_dim);
    m->input_ndim = 3;
    m->input_shape[0] = 1;
    m->input_shape[1] = s;
    m->input_shape[2] = s;
  } else {
    m->input_ndim = 1;
    m->input_shape[0] = (uint32_t)x_dim;
  }
}

/* Unsigned integer fields after the layer name: "conv2d:6:5:1:0" -> {6, 5, 1, 0}. */
static int parse_args(const char *p, const char *end, uint32_t *args, int max, int *n) {
  *n = 0;
  while (p < end && *p == ':') {
    if (*n == max)
      return FL_E_PARSE;
    char *stop = NULL;
    errno = 0;
    unsigned long v = strtoul(p + 1, &stop, 10);
    if (errno != 0 || stop == p + 1 || stop > end || v > 1u << 20)
      return FL_E_PARSE;
    args[(*n)++] = (uint32_t)v;
    p = stop;
  }
  return p == end ? FL_OK : FL_E_PARSE;
}

static int parse_layer(fl_layer_spec *l, const char *p, const char *end) {
  const char *colon = memchr(p, ':', (size_t)(end - p));
  const char *name_end = colon ? colon : end;
  uint32_t a[4] = {0};
  int n = 0;
  memset(l, 0, sizeof(*l));
  l->type = layer_type(p, (size_t)(name_end - p));
  if (l->type == 0 || parse_args(name_end, end, a, 4, &n) != FL_OK)
    return FL_E_PARSE;
  switch (l->type) {
    case FL_LAYER_DENSE:
      if (n != 1 || a[0] == 0)
        return FL_E_PARSE;
      l->units = a[0];
      return FL_OK;
    case FL_LAYER_CONV2D:
      if (n < 2 || a[0] == 0 || a[1] == 0)
        return FL_E_PARSE;
      l->out_channels = a[0];
      l->kernel = a[1];
      l->stride = n > 2 ? a[2] : 1;
      l->padding = n > 3 ? a[3] : 0;
      return FL_OK;
    case FL_LAYER_MAXPOOL2D:
      if (n < 1 || n > 2 || a[0] == 0)
        return FL_E_PARSE;
      l->kernel = a[0];
      l->stride = n > 1 ? a[1] : a[0];
      return FL_OK;
    default:
      return n == 0 ? FL_OK : FL_E_PARSE;
  }
}

int sim_model_parse(fl_model_spec *out, const char *layers, size_t x_dim, int loss) {
  fl_model_spec m;
  memset(&m, 0, sizeof(m));
  if (x_dim == 0 || x_dim > UINT32_MAX || (loss != FL_LOSS_SOFTMAX_CE && loss != FL_LOSS_MSE))
    return FL_E_INVAL;
  const char *p = layers;
  while (*p != '\0') {
    const char *end = strchr(p, ',');
    if (end == NULL)
      end = p + strlen(p);
    if (m.n_layers == FL_MAX_LAYERS || parse_layer(&m.layers[m.n_layers], p, end) != FL_OK)
      return FL_E_PARSE;
    m.n_layers++;
    if (*end == ',' && end[1] == '\0')
      return FL_E_PARSE;
    p = *end == ',' ? end + 1 : end;
  }
  if (m.n_layers == 0)
    return FL_E_PARSE;
  int image = m.layers[0].type == FL_LAYER_CONV2D;
  if (image && square_side(x_dim) == 0)
    return FL_E_INVAL;
  set_input(&m, x_dim, image);
  m.loss = loss;
  *out = m;
  return FL_OK;
}

int sim_model_named(fl_model_spec *out, const char *name, size_t x_dim, int32_t n_classes) {
  char buf[256];
  int loss = FL_LOSS_SOFTMAX_CE;
  int len;
  if (strcmp(name, "logreg") == 0)
    len = snprintf(buf, sizeof(buf), "dense:%d", (int)n_classes);
  else if (strcmp(name, "mlp") == 0)
    len = snprintf(buf, sizeof(buf), "dense:100,relu,dense:%d", (int)n_classes);
  else if (strcmp(name, "2nn") == 0)
    len = snprintf(buf, sizeof(buf), "dense:200,relu,dense:200,relu,dense:%d", (int)n_classes);
  else if (strcmp(name, "cnn") == 0)
    len = snprintf(buf, sizeof(buf),
                   "conv2d:6:5,relu,maxpool2d:2,conv2d:16:5,relu,maxpool2d:2,flatten,"
                   "dense:120,relu,dense:84,relu,dense:%d",
                   (int)n_classes);
  else if (strcmp(name, "autoencoder") == 0) {
    len = snprintf(buf, sizeof(buf), "dense:32,relu,dense:8,relu,dense:32,relu,dense:%zu",
                   x_dim);
    loss = FL_LOSS_MSE;
  } else
    return FL_E_INVAL;
  if (len < 0 || (size_t)len >= sizeof(buf) || (loss == FL_LOSS_SOFTMAX_CE && n_classes < 2))
    return FL_E_INVAL;
  return sim_model_parse(out, buf, x_dim, loss);
}
