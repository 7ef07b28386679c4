/*
 * Model specifications by name, or from a short layer list, for the data at hand.
 *
 *   logreg       dense(classes)                                  multinomial logistic regression
 *   mlp          dense(100) relu dense(classes)                   Xiao et al.'s MLP baseline
 *   2nn          dense(200) relu dense(200) relu dense(classes)   McMahan et al.'s 2NN
 *   cnn          the simple CNN of ARCHITECTURE.md section 6 (square one-channel images)
 *   autoencoder  dense(32) relu dense(8) relu dense(32) relu dense(x_dim), MSE on the input
 *
 * A layer list reads "dense:200,relu,conv2d:6:5[:stride[:padding]],maxpool2d:2,flatten,sigmoid,
 * tanh". When it starts with conv2d the input is a one-channel square image of x_dim pixels,
 * otherwise a vector of x_dim features. Every result passes fl__spec_validate's shape rules
 * only if the layers fit; the caller validates.
 */
#ifndef SIM_MODEL_SPECS_H
#define SIM_MODEL_SPECS_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* FL_E_INVAL for an unknown name or input that the model cannot take. */
int sim_model_named(fl_model_spec *out, const char *name, size_t x_dim, int32_t n_classes);

/* loss: FL_LOSS_SOFTMAX_CE or FL_LOSS_MSE. FL_E_PARSE for a malformed list. */
int sim_model_parse(fl_model_spec *out, const char *layers, size_t x_dim, int loss);

/* Name of a layer type as the admin API spells it ("dense", "conv2d", ...); NULL if unknown. */
const char *sim_layer_name(int type);

#endif
