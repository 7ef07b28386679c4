/*
 * --export-learning DIR: the learning work of a run written out, so that another
 * implementation (benches/fedavg_numpy.py) can do exactly the same learning without fl-sim's
 * network, signatures or database: the same initial weights, the same split of the data over
 * the devices, the same model and local training settings.
 *
 * DIR/params.f32  the initial model's flat parameters, float32 little-endian, fl-sim's layout
 *                 (layer by layer, weights [out, in] then bias [out]; common/model.h)
 * DIR/split.u32   uint32 little-endian: n_devices, then n_devices + 1 offsets into the index
 *                 list, then the indices into the training set (device k owns
 *                 index[offsets[k] .. offsets[k+1]))
 * DIR/learning.txt  "name value" lines: dataset, data_dir, dims (the dense layers' sizes,
 *                 input first, ReLU between them), n_params, epochs, batch, lr, clip_norm,
 *                 server_lr, rounds, devices, seed
 */
#ifndef SIM_EXPORT_H
#define SIM_EXPORT_H

#include "model.h"
#include "options.h"
#include "partition.h"

/* FL_E_INVAL (with why in msg) for a model other than dense layers with ReLU between them, or
 * for training settings the export does not describe (momentum, weight decay, FedProx, another
 * server optimizer, lossy encodings, faults); FL_E_IO when DIR cannot be written. */
int sim_export_learning(const char *dir, const sim_options *o, const fl_model_spec *spec,
                        const float *params, size_t n_params, const sim_partition *part, char *msg,
                        size_t cap);

#endif
