/*
 * The FedProx Synthetic(alpha, beta) data (Li et al. 2020, the litian96/FedProx generator), as
 * ARCHITECTURE.md section 6 states it. For device k:
 *   samples n_k = floor(lognormal(4, 2)) + 50
 *   u_k ~ N(0, alpha^2), B_k ~ N(0, beta^2)            (alpha and beta are standard deviations)
 *   v_k[j] ~ N(B_k, 1); Sigma = diag(j^-1.2), j = 1..dim  (Sigma is the covariance)
 *   W_k[j][c], b_k[c] ~ N(u_k, 1)
 *   x ~ N(v_k, Sigma); y = argmax(x W_k + b_k)            (softmax does not move the argmax)
 * The first floor(0.9 n_k) examples of each device are its training data, the rest its test
 * data. alpha controls how much the models differ between devices, beta how much the inputs do.
 * With `iid` set, every device shares one W, b ~ N(0, 1) and v_k = B_k (the generator's iid mode).
 */
#ifndef SIM_SYNTHETIC_H
#define SIM_SYNTHETIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "partition.h"

typedef struct sim_synthetic_opts {
  size_t n_devices;   /* 30 in the paper */
  size_t dim;         /* 60 */
  int32_t n_classes;  /* 10 */
  double alpha, beta;
  bool iid;
  size_t max_samples; /* per device, 0: no cap (the lognormal tail is long) */
  uint64_t seed;
} sim_synthetic_opts;

typedef struct sim_synthetic {
  fl_dataset train, test;   /* all devices' examples, device by device */
  sim_partition train_part; /* device k's rows of `train` */
  sim_partition test_part;  /* device k's rows of `test` */
} sim_synthetic;

/* On error *out is untouched. */
int sim_synthetic_generate(sim_synthetic *out, const sim_synthetic_opts *o);
void sim_synthetic_free(sim_synthetic *s);

#endif
