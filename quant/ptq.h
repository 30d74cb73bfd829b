// Post-training weight quantization (GPTQ, or RTN as the baseline) of every decoder linear, walking the model one
// decoder block at a time on calibration sequences, as IST-DASLab/gptq does:
//   - the block's inputs are the previous block's outputs computed with its quantized weights;
//   - true-sequential: within a block, the linears that share an input ([k, v, q], [o], [up, gate], [down]; OPT:
//     [k, v, q], [out], [fc1], [fc2]) are quantized in that order, each group's Hessian taken with the groups
//     before it already quantized; otherwise every Hessian comes from the full-precision block;
//   - H = 2 / sequences * sum X^T X, the sums added over the DP group (so the result does not depend on DP).
// Tensor parallelism: a column-parallel shard [out/tp, in] is quantized as it is (rows are independent given H).
// A row-parallel layer [out, in/tp] (o_proj, down_proj / fc2) needs the Hessian of its whole input: in the exact
// mode every rank quantizes a slice of rows with all columns (weights redistributed over the TP group, then back),
// which gives the TP = 1 result; the `shard` mode quantizes each rank's columns with its own diagonal block of H
// (cheaper, an approximation). Sums are built from row blocks (each rank computes 1/tp of X^T X).
#pragma once

#include "framework/config/config.h"
#include "framework/dist/communicator.h"
#include "framework/model/transformer.h"
#include "quant/gptq.h"
#include "quant/gptq_checkpoint.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace qforge::quant {

struct PtqSettings {  // config section `ptq`
  std::string method = "gptq";            // gptq | rtn | rptq (GPTQ weights + RPTQ's reorders and activations)
  int wbits = 4;                          // 2..8
  int64_t group_size = -1;                // input columns per scale; -1: one per row
  bool sym = true;
  bool act_order = false;                 // columns by decreasing Hessian diagonal
  bool static_groups = false;             // group ranges fixed up front (with act_order: trivial g_idx)
  int64_t block_size = 128;               // GPTQ's lazy-batch block
  double percdamp = 0.01;                 // damping, fraction of mean(diag H)
  bool true_sequential = true;
  std::string row_parallel = "exact";     // exact | shard (per-rank Hessian block: cheaper, approximate)
  std::string hessian_dtype = "float64";  // float64 | float32: accumulation and DP/TP reduction of X^T X
  std::string calib;                      // calibration text file
  std::string calib_corpus;               // or a qforge corpus (HDF5 from generate): data-free calibration
  std::string calib_windows = "random";   // random (seeded, as the reference) | consecutive (from the start)
  int64_t nsamples = 128;                 // calibration sequences
  int64_t seq_len = 0;                    // tokens per sequence; 0: the model's context (text), or the corpus's
  int64_t seed = 0;
  int64_t batch_size = 1;                 // sequences per forward pass (1: the reference's; layout-independent)
  std::vector<std::string> exclude;       // substrings of linear names kept in full precision
  std::string save = "both";              // gptq (output.dir/gptq) | fake (output.dir) | both
  bool errors = true;                     // report ||WX - QX||^2 of the method and RTN (needs every whole sum)

  template <class V>
  void visit(V& v) {
    v("method", method, config::one_of({"gptq", "rtn", "rptq"}));
    v("wbits", wbits, [](int b) { return b >= 2 && b <= 8 ? std::string() : std::string("2..8"); });
    v("group_size", group_size,
      [](int64_t g) { return g == -1 || g >= 1 ? std::string() : std::string("-1 (per row) or >= 1"); });
    v("sym", sym);
    v("act_order", act_order);
    v("static_groups", static_groups);
    v("block_size", block_size, config::at_least(1));
    v("percdamp", percdamp, [](double p) { return p >= 0 && p < 1 ? std::string() : std::string("in [0, 1)"); });
    v("true_sequential", true_sequential);
    v("row_parallel", row_parallel, config::one_of({"exact", "shard"}));
    v("hessian_dtype", hessian_dtype, config::one_of({"float64", "float32"}));
    v("calib", calib);
    v("calib_corpus", calib_corpus);
    v("calib_windows", calib_windows, config::one_of({"random", "consecutive"}));
    v("nsamples", nsamples, config::at_least(1));
    v("seq_len", seq_len, config::at_least(0));
    v("seed", seed, config::at_least(0));
    v("batch_size", batch_size, config::at_least(1));
    v("exclude", exclude);
    v("save", save, config::one_of({"both", "gptq", "fake"}));
    v("errors", errors);
  }

  bool uses_gptq() const { return method != "rtn"; }
  GptqOptions gptq_options() const;
  GptqQuantizationConfig gptq_config() const;  // the checkpoint's quantization_config
  // "gptq w4 g128 sym act-order" and the like.
  std::string describe() const;
};

struct LinearReport {
  std::string name;
  int64_t rows = 0, columns = 0;  // full weight [out, in]
  double error = -1;              // ||W X^T - Q X^T||^2 over the calibration tokens of the method's Q (-1: no data)
  double gptq_error = -1;         // of GPTQ's Q (method gptq)
  double rtn_error = -1;          // of RTN's Q with the same grid: the baseline
  double seconds = 0;             // quantizing it (its share of the Hessian pass not included)
};

struct PtqReport {
  std::vector<LinearReport> linears;
  int64_t sequences = 0;  // calibration sequences over the job
  int64_t seq_len = 0;
  double seconds = 0;
  GptqExport quantized;  // every quantized linear's grid on this rank, for export_gptq
  nlohmann::json to_json(const PtqSettings& settings) const;
};

// Steps a method adds to the walk (RPTQ: reorders, activation quantizers, fixed weight grids).
struct PtqHooks {
  // Called before the linears of block `layer` are quantized, with a function that runs the block as it then is
  // over the calibration batches (observers see them; its outputs are dropped). Collective like run_ptq.
  std::function<void(int64_t layer, const std::function<void()>& run_block)> before_block;
  // Wraps the pass that computes block `layer`'s outputs (the next block's inputs) once its weights are quantized:
  // `run_block` is that pass (e.g. RPTQ takes its activation quantizers off around it).
  std::function<void(int64_t layer, const std::function<void()>& run_block)> propagate;
  // Quantizes `rows` (a weight's rows with all their input columns) given the Hessian (fp32, undefined without
  // calibration) instead of GPTQ / RTN on ptq's grid. Its grids are not exported (PtqReport::quantized).
  std::function<GptqResult(const model::LinearSite& site, const torch::Tensor& rows, const torch::Tensor& hessian)>
      quantize;
};

// Quantizes every decoder linear of `model` not excluded, replacing its weights by their fake-quantized values.
// `sequences` [n, T] are this DP rank's calibration sequences (may be empty tensors with n = 0 for method rtn, which
// then reports no errors). Collective over the model's TP group and over `dp`.
PtqReport run_ptq(model::CausalLM& model, const torch::Tensor& sequences, const PtqSettings& settings,
                  dist::Communicator& dp, const PtqHooks& hooks = {});

}  // namespace qforge::quant
