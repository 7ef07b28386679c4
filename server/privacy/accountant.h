/*
 * The privacy accountant (accountant.c): Renyi differential privacy of the Poisson-subsampled
 * Gaussian mechanism (Mironov, Talwar, Zhang 2019, "Renyi Differential Privacy of the Sampled
 * Gaussian Mechanism"), its composition over rounds and the conversion to (epsilon, delta);
 * and the adaptive clipping of Andrew, Thakkar, McMahan, Ramaswamy 2021 ("Differentially
 * private learning with adaptive clipping"). Pure math, no I/O: docs/PRIVACY.md says what the
 * figures mean for a plan.
 */
#ifndef FL__ACCOUNTANT_H
#define FL__ACCOUNTANT_H

#include <stddef.h>
#include <stdint.h>

/* The orders the accountant minimises over: 1.25, 1.5, 1.75, 2.25 ... 9.75 in quarters (not
 * the integers), then every integer 2..256, then 320, 384, 512, 768, 1024. */
size_t fl__dp_n_orders(void);
double fl__dp_order(size_t i);

/* RDP of one step of the sampled Gaussian mechanism with sampling rate q in [0, 1] and noise
 * multiplier z > 0 (noise sd / sensitivity) at order alpha > 1. Integer orders use the closed
 * form sum_k C(a,k) (1-q)^(a-k) q^k exp((k^2-k)/(2 z^2)) in log space; fractional orders the
 * two-sided series of MTZ19 section 3.3. q = 1 gives alpha / (2 z^2) exactly, q = 0 gives 0.
 * Returns NaN for arguments out of range, +Inf when the value overflows. */
double fl__dp_rdp(double q, double z, double alpha);

/* epsilon = min over the orders a of (steps * RDP(a) + log(1/delta) / (a - 1)) (Mironov 2017,
 * proposition 3: the conversion docs/PRIVACY.md documents). 0 when steps is 0; +Inf when no
 * order gives a finite value; NaN on bad arguments (delta outside (0, 1), z <= 0, q outside
 * [0, 1]). *order (may be NULL) receives the minimising order. */
double fl__dp_epsilon(double q, double z, uint64_t steps, double delta, double *order);

/* The tighter conversion of Balle, Barthe, Gaboardi, Hsu, Sato 2020 (theorem 21):
 * eps = min_a (steps * RDP(a) + log((a-1)/a) - (log(delta) + log(a)) / (a-1)); offered for
 * comparison only (the API reports fl__dp_epsilon). */
double fl__dp_epsilon_balle(double q, double z, uint64_t steps, double delta);

/* Adaptive clipping (Andrew et al. 2021). The total noise multiplier z of a round is split
 * between the update sum (z_delta) and the count of unclipped updates (noise sd sigma_b):
 * z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2), which needs sigma_b > z / 2; NaN otherwise.
 * The accountant then charges z, as the paper does (the pair of Gaussian queries, with
 * sensitivities C and 1/2 after centring the bit, compose to one of multiplier z). */
double fl__dp_update_multiplier(double z, double sigma_b);

/* The clip of the next round: C * exp(-eta * (b_bar - gamma)), where b_bar is the noised
 * fraction of updates that were not clipped and gamma the target quantile (geometric update,
 * the paper's recommended form). */
double fl__dp_next_clip(double clip, double eta, double b_bar, double gamma);

#endif
