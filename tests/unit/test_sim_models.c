/* Named models of fl-sim build valid specs with the parameter counts of their papers, and the
 * layer-list parser refuses malformed lists. */
#include <criterion/criterion.h>

#include "fl/err.h"
#include "model.h"
#include "model_specs.h"

static size_t n_params(const char *name, size_t x_dim, int32_t classes) {
  fl_model_spec s;
  cr_assert_eq(sim_model_named(&s, name, x_dim, classes), FL_OK, "%s", name);
  cr_assert_eq(fl__spec_validate(&s), FL_OK, "%s", name);
  fl_model *m = NULL;
  cr_assert_eq(fl__model_new(&m, &s, NULL), FL_OK);
  size_t n = fl__model_num_params(m);
  fl__model_free(m);
  return n;
}

Test(sim_models, parameter_counts) {
  cr_assert_eq(n_params("logreg", 784, 10), 7850);
  cr_assert_eq(n_params("mlp", 784, 10), 79510);
  cr_assert_eq(n_params("2nn", 784, 10), 199210, "McMahan et al.'s 2NN has 199,210");
  /* conv 156 + conv 2416 + dense 30840 + dense 10164 + dense 850 */
  cr_assert_eq(n_params("cnn", 784, 10), 44426);
  cr_assert_eq(n_params("logreg", 60, 10), 610);
  /* 64->32->8->32->64 */
  cr_assert_eq(n_params("autoencoder", 64, 0), 2080 + 264 + 288 + 2112);
}

Test(sim_models, cnn_takes_square_images) {
  fl_model_spec s;
  cr_assert_eq(sim_model_named(&s, "cnn", 784, 10), FL_OK);
  cr_assert_eq(s.input_ndim, 3);
  cr_assert_eq(s.input_shape[0], 1);
  cr_assert_eq(s.input_shape[1], 28);
  cr_assert_eq(s.layers[0].type, FL_LAYER_CONV2D);
  cr_assert_eq(s.layers[0].kernel, 5);
  cr_assert_eq(s.layers[2].stride, 2);
  cr_assert_eq(sim_model_named(&s, "cnn", 60, 10), FL_E_INVAL);
  cr_assert_eq(sim_model_named(&s, "autoencoder", 64, 0), FL_OK);
  cr_assert_eq(s.loss, FL_LOSS_MSE);
  cr_assert_eq(sim_model_named(&s, "resnet", 784, 10), FL_E_INVAL);
  cr_assert_eq(sim_model_named(&s, "logreg", 784, 1), FL_E_INVAL);
}

Test(sim_models, layer_list) {
  fl_model_spec s;
  cr_assert_eq(sim_model_parse(&s, "conv2d:4:3:1:1,tanh,maxpool2d:2,flatten,dense:10", 784,
                               FL_LOSS_SOFTMAX_CE),
               FL_OK);
  cr_assert_eq(s.n_layers, 5);
  cr_assert_eq(s.layers[0].out_channels, 4);
  cr_assert_eq(s.layers[0].padding, 1);
  cr_assert_eq(s.layers[1].type, FL_LAYER_TANH);
  cr_assert_eq(fl__spec_validate(&s), FL_OK);
  cr_assert_eq(sim_model_parse(&s, "dense:3,sigmoid", 5, FL_LOSS_MSE), FL_OK);
  cr_assert_eq(s.input_ndim, 1);
  cr_assert_eq(s.input_shape[0], 5);
  const char *bad[] = {"", "dense", "dense:", "dense:0", "dense:5:5", "relu:1", "conv2d:4",
                       "dense:10,,relu", "dense:10,", "lstm:4", "dense:-3"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    cr_assert_eq(sim_model_parse(&s, bad[i], 784, FL_LOSS_SOFTMAX_CE), FL_E_PARSE, "'%s'",
                 bad[i]);
  cr_assert_eq(sim_layer_name(FL_LAYER_MAXPOOL2D)[0], 'm');
  cr_assert_null(sim_layer_name(99));
}
