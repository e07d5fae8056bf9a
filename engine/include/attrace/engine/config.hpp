#pragma once
// Every setting of an attribution run: read from a human-written TOML file, overridden by CLI
// flags, echoed in full into the output manifest. Reference: docs/formats.md#config.
#include <attrace/connectors/feature_store.hpp>
#include <attrace/kernels/backend.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace attrace::engine {

/// Per-example loss whose gradient is attributed.
enum class Loss { cross_entropy, mse, next_token };
/// Precision of the model, the per-example gradients and the features.
enum class Precision { fp32, fp64 };
/// How per-example gradients are computed.
enum class GradPath { automatic, chain, graph, general };
/// What happens to negative influence when tranche shares are formed.
enum class NegativePolicy { clip, clip_per_query };
/// How gradients become features: exactly, or randomly projected to k dimensions.
enum class Projection { none, dense, kronecker };

/// Whether the full score matrix is written to scores.h5.
enum class ScoresOutput { automatic, always, never };
/// Compute backend (kernels::make_backend).
enum class Device { cpu, cuda, automatic };
/// How train x query scores are accumulated.
enum class Scoring { fma, canonical, blas };
/// Distribution of the projection entries.
enum class Distribution { rademacher, gaussian };
/// Storage type of features: auto = f32, or f64 for exact float64 gradients.
enum class FeatureType { automatic, f32, f64, bf16, f16 };
/// Whether exact features hold a layer's gradient or its factors (inputs and output gradients):
/// auto = factors where they cost fewer operations per pair (docs/formats.md, "Factored features").
enum class Factoring { automatic, never, always };
/// Who is credited for an example held by several tranches (docs/rewards.md): the earliest
/// registered holder, every holder evenly, or every copy as before (none).
enum class DuplicateCredit { first_registered, split, none };
/// Which examples count as the same for duplicate credit: content-identical copies only, or
/// also near-duplicates found by the quality signals (sketch cosine >= the threshold).
enum class DuplicateMatch { exact, near };
/// Attribution method scoring train x query pairs (docs/eval.md): TracIn (lr-weighted sum over
/// checkpoints), Grad-Dot (one checkpoint), Grad-Cos (unit features), TRAK-style (kernel-whitened).
enum class Method { tracin, grad_dot, grad_cos, trak };
/// What happens to a tranche whose outlier share exceeds the threshold (docs/rewards.md).
enum class QualityHold { downweight, none };

/// All settings of `attrace attribute`. Paths are resolved relative to the config file.
struct Config {
  std::string config_file;  ///< where it was read from (empty: built in code)
  // [run] / [data]
  std::string run_file;    ///< training run: checkpoints with step and lr
  std::string train_file;  ///< training dataset (HDF5, with tranches)
  std::string query_file;  ///< query dataset (HDF5): the usage being attributed
  // [gradients]
  Loss loss = Loss::cross_entropy;
  std::vector<std::string> parameters = {"*"};  ///< glob patterns over parameter names
  std::vector<std::string> exclude;             ///< glob patterns of parameters left out (after `parameters`)
  int64_t batch_size = 0;  ///< rows per model call; 0: "auto" (Featurizer::batch_rows)
  GradPath path = GradPath::automatic;
  std::string model_output;  ///< which output is the logits: "" (forward returns a tensor), a tuple index, or a dict key
  Precision precision = Precision::fp32;
  Device device = Device::cpu;  ///< compute backend
  // [projection]
  Projection projection = Projection::none;
  int64_t projection_k = 4096;        ///< target feature dimension per checkpoint
  uint64_t projection_seed = 0;       ///< seed of the counter-based generator
  Distribution projection_distribution = Distribution::rademacher;
  // [features]
  FeatureType feature_dtype = FeatureType::automatic;  ///< storage type of features (store and memory)
  int64_t exact_limit = int64_t{64} << 30;  ///< largest exact (unprojected) feature set in bytes
  Factoring factored = Factoring::automatic;  ///< exact features: layers as factors (auto | never | always)
  // [attribution]
  int64_t top_k = 10;
  int64_t token_proponents = 3;  ///< token datasets: per query, the top proponents whose tokens are scored (0: none)
  int64_t token_top = 5;         ///< ... and how many of each one's tokens are listed
  Scoring scoring = Scoring::fma;  ///< fma (fixed-order fp32 FMA, the fast default) | canonical (fp64 check) | blas
  kernels::GemmMath gemm_math = kernels::GemmMath::ieee;  ///< blas arithmetic: ieee | tf32 | bf16 (fp32 features only)
  int64_t memory_limit = 0;  ///< bytes the scorer may hold (0: half of physical memory); changes speed only
  NegativePolicy negative_policy = NegativePolicy::clip;
  double duplicate_threshold = 0.5;  ///< flag tranche pairs sharing at least this fraction
  double tolerance = 1e-6;           ///< declared verification tolerance on tranche shares
  Method method = Method::tracin;    ///< attribution.method (engine/methods.hpp)
  int64_t method_checkpoint = -1;    ///< attribution.checkpoint: grad_dot's checkpoint (0-based; -1: the last)
  double trak_lambda = 1e-3;         ///< attribution.trak_lambda: ridge, relative to the kernel's mean diagonal
  // [rewards] (docs/rewards.md)
  DuplicateCredit duplicate_credit = DuplicateCredit::first_registered;
  DuplicateMatch duplicate_match = DuplicateMatch::near;
  QualityHold quality_hold = QualityHold::downweight;
  double quality_hold_threshold = 0.10;    ///< held when the tranche's deduplicated outlier share exceeds this
  int64_t quality_hold_min_outliers = 5;   ///< ... and it holds at least this many outliers
  // [output]
  ScoresOutput scores = ScoresOutput::automatic;
  int64_t scores_max_entries = 10'000'000;  ///< automatic: write scores.h5 up to this many entries
};

/// Reads a config file, applies `overrides` ("section.key=value" TOML fragments, in order) and
/// validates every value. InputError naming the file, key and value on any problem.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});

/// Rebuilds a config from the `settings` object of a manifest (the output of to_json), e.g. for
/// an auditor's recomputation. Paths are taken as written; settings without a `rewards` table
/// (manifests written before the reward rules) get duplicate_credit and quality_hold = none.
/// InputError naming `what` otherwise.
Config config_from_json(const nlohmann::json& settings, const std::string& what);

/// The storage type features get under this config (resolves `auto`).
connectors::FeatureDtype feature_dtype_of(const Config& c);

/// Validates values and relations (batch size > 0, k >= 0, files named). InputError otherwise.
void validate(const Config& c);

/// The settings as canonical JSON, for the manifest.
nlohmann::json to_json(const Config& c);

/// Names of enum values as they appear in config files and manifests.
std::string to_string(Loss v);
std::string to_string(Precision v);
std::string to_string(GradPath v);
std::string to_string(NegativePolicy v);
std::string to_string(ScoresOutput v);
std::string to_string(Projection v);
std::string to_string(Device v);
std::string to_string(Scoring v);
std::string to_string(Distribution v);
std::string to_string(FeatureType v);
std::string to_string(Factoring v);
std::string to_string(DuplicateCredit v);
std::string to_string(DuplicateMatch v);
std::string to_string(QualityHold v);
std::string to_string(Method v);

}  // namespace attrace::engine
