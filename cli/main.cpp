// The attrace command line. Every subcommand has --help; errors print one line naming the
// file/field/example at fault and exit non-zero.
#include "demo.hpp"
#include "demo_lm.hpp"
#include "eval.hpp"
#include "ledger_cmd.hpp"
#include "passive_waits.hpp"
#include "verify.hpp"

#include <attrace/connectors/csv_import.hpp>
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/text_import.hpp>
#include <attrace/engine/attribute.hpp>
#include <attrace/engine/report.hpp>
#include <attrace/error.hpp>
#include <attrace/interrupt.hpp>

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <string>

#include <unistd.h>

namespace {

void setup_logging(bool quiet) {
  auto logger = spdlog::stderr_color_mt("attrace");
  logger->set_pattern("%^[%l]%$ %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(quiet ? spdlog::level::warn : spdlog::level::info);
}

// An integer option's check: CLI11's own range checks print their bound as a 309-digit number.
CLI::Validator integer_at_least(long long lowest) {
  return CLI::Validator(
      [lowest](std::string& text) -> std::string {
        long long v = 0;
        size_t used = 0;
        try {
          v = std::stoll(text, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used == 0 || used != text.size() || v < lowest)
          return "must be an integer >= " + std::to_string(lowest) + ", got '" + text + "'";
        return "";
      },
      "INT>=" + std::to_string(lowest));
}

void print_vector(const attrace::engine::RunSummary& s) {
  std::printf("%-20s %-44s %8s %9s %16s  %s\n", "tranche", "account", "examples", "share", "total influence", "flags");
  for (const auto& t : s.attribution.tranches) {
    std::string flags;
    for (const auto& f : t.flags) flags += (flags.empty() ? "" : " ") + f;
    std::printf("%-20s %-44s %8lld %8.3f%% %16.6g  %s\n", t.tranche.id.c_str(), t.tranche.account.c_str(),
                static_cast<long long>(t.examples), 100.0 * t.share, t.total_influence, flags.c_str());
  }
}

}  // namespace

// Worker threads that spin between parallel regions take the CPU from the threads doing the work
// when cores are shared (measured: LM featurization 6-9x slower on a loaded 2-vCPU machine). Two
// pools spin: libgomp's (OMP_WAIT_POLICY unset: ~3 ms after each region) and OpenBLAS's (its
// workers yield in a loop for 2^28 cycles, ~0.1 s, after each call: on the issue-10 workload up to
// a quarter of the process's CPU time, while the scoring threads wanted those cores). Both
// libraries read their setting in their initializers, before main. The `attrace` launcher
// (launcher.cpp) sets OMP_WAIT_POLICY=passive and OPENBLAS_THREAD_TIMEOUT=20 for the commands that
// compute, unless the user set OMP_WAIT_POLICY; attrace-core started some other way does the
// same by executing itself once more. Speed only, never a bit of a result.
#if defined(__GLIBC__)
// glibc runs an executable's .preinit_array functions with (argc, argv, envp) once every library
// is mapped and relocated but before any library initializer has run: executing again from here
// skips LibTorch's operator registration and every other static initializer of ~80-290
// libraries (lean or system LibTorch) in the first image, and their destructors (measured: a
// second start cost ~0.55 s of CPU from main, ~0.2 s from here, the symbol binding). libc is not
// initialized yet (setenv would be undone by its initializer), so the new environment is built by
// hand for execve; only strncmp, malloc and execve are used.
static void prefer_passive_waits(int argc, char** argv, char** envp) {
  if (envp == nullptr || argv == nullptr || !attrace::cli::computes(argc, argv)) return;
  size_t n = 0;
  bool blas_set = false;
  for (; envp[n] != nullptr; ++n) {
    if (std::strncmp(envp[n], "OMP_WAIT_POLICY=", 16) == 0) return;  // the user's choice, for both pools
    blas_set |= std::strncmp(envp[n], "OPENBLAS_THREAD_TIMEOUT=", 24) == 0;
  }
  auto** env = static_cast<char**>(std::malloc((n + 3) * sizeof(char*)));
  if (env == nullptr) return;
  for (size_t i = 0; i < n; ++i) env[i] = envp[i];
  env[n++] = const_cast<char*>(attrace::cli::kOmpWaitPolicyEntry);  // execve copies, never writes
  if (!blas_set) env[n++] = const_cast<char*>(attrace::cli::kOpenblasThreadTimeoutEntry);
  env[n] = nullptr;
  ::execve("/proc/self/exe", argv, env);  // returns only on failure: then run as we are
  std::free(env);
}
__attribute__((section(".preinit_array"), used)) static void (*const passive_waits_hook)(int, char**, char**) =
    &prefer_passive_waits;
#else
// Elsewhere .preinit_array functions get no arguments: execute again from main.
static void prefer_passive_waits(int argc, char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || !attrace::cli::computes(argc, argv)) return;
  ::setenv("OMP_WAIT_POLICY", "passive", 1);
  ::setenv("OPENBLAS_THREAD_TIMEOUT", attrace::cli::kOpenblasThreadTimeout, 0);
  ::execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
}
#endif

// Sanitizer builds check for leaks at exit: they always leave through exit().
#if defined(__SANITIZE_ADDRESS__)
#define ATTRACE_CLI_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(leak_sanitizer)
#define ATTRACE_CLI_SANITIZED 1
#endif
#endif

// The whole command line; `committed` is set when a command that writes its outputs through
// closed, committed files (attribute, featurize, score) or only prints (version) succeeded.
static int run_cli(int argc, char** argv, bool& committed) {
  CLI::App app{"attrace: training-data attribution per tranche, recomputable for payments and audits"};
  app.require_subcommand(1);
  bool quiet = false;
  app.add_flag("-q,--quiet", quiet, "No progress or info messages on stderr");

  // attribute
  auto* attr = app.add_subcommand("attribute",
                                  "TracIn attribution (exact or projected) of a query set to training tranches: featurize + score in one call");
  std::string config_path, out_dir, precision, loss, path, device, scores;
  long long batch_size = 0, top_k = -1;
  bool force = false;
  std::vector<std::string> sets;
  attr->add_option("-c,--config", config_path, "Run configuration (TOML)")->required()->check(CLI::ExistingFile);
  attr->add_option("-o,--out", out_dir, "Output directory to create (written atomically)")->required();
  attr->add_flag("--force", force, "Replace the output directory if it exists");
  attr->add_option("--precision", precision, "Overrides gradients.precision")->check(CLI::IsMember({"fp32", "fp64"}));
  attr->add_option("--loss", loss, "Overrides gradients.loss")->check(CLI::IsMember({"cross_entropy", "mse"}));
  attr->add_option("--path", path, "Overrides gradients.path")->check(CLI::IsMember({"auto", "chain", "general"}));
  attr->add_option("--device", device, "Overrides gradients.device")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  attr->add_option("--batch-size", batch_size, "Overrides gradients.batch_size")->check(integer_at_least(1));
  attr->add_option("--top-k", top_k, "Overrides attribution.top_k")->check(integer_at_least(0));
  attr->add_option("--scores", scores, "Overrides output.scores")->check(CLI::IsMember({"auto", "always", "never"}));
  std::string projection;
  long long proj_k = 0;
  attr->add_option("--projection", projection, "Overrides projection.kind")->check(CLI::IsMember({"none", "dense", "kronecker"}));
  attr->add_option("--k", proj_k, "Overrides projection.k")->check(integer_at_least(1));
  attr->add_option("--set", sets, "Overrides any setting: section.key=value (TOML value), repeatable");
  attr->add_flag("-q,--quiet", quiet, "No progress or info messages on stderr");
  std::string memory_limit;
  attr->add_option("--memory-limit", memory_limit, "Overrides attribution.memory_limit (e.g. 8GiB; speed only, never a result)");
  attrace::cli::RegistryOptions attr_registry, sc_registry;
  attrace::cli::add_registry_options(attr, attr_registry);

  // featurize
  auto* feat = app.add_subcommand("featurize", "Per-example features of every checkpoint into a feature store (resumable)");
  std::string feat_config, feat_store;
  bool feat_query = false, feat_force = false;
  std::vector<std::string> feat_sets;
  feat->add_option("-c,--config", feat_config, "Run configuration (TOML)")->required()->check(CLI::ExistingFile);
  feat->add_option("-o,--out", feat_store, "Feature store to create, or to resume if interrupted (.h5)")->required();
  feat->add_flag("--query", feat_query, "Featurize data.query instead of data.train (a query store)");
  feat->add_flag("--force", feat_force, "Replace a store that was made with other settings or inputs");
  feat->add_option("--set", feat_sets, "Overrides any setting: section.key=value (TOML value), repeatable");
  feat->add_flag("-q,--quiet", quiet, "No progress or info messages on stderr");

  // score
  auto* sc = app.add_subcommand("score", "Score a query set against a training-set feature store; same outputs as attribute");
  std::string sc_config, sc_store, sc_query_store, sc_out, sc_memory;
  bool sc_force = false;
  std::vector<std::string> sc_sets;
  sc->add_option("-c,--config", sc_config, "Run configuration (TOML); its featurization settings must match the store's")
      ->required()
      ->check(CLI::ExistingFile);
  sc->add_option("--store", sc_store, "Training-set feature store (from attrace featurize)")->required();
  sc->add_option("--query-store", sc_query_store, "Query feature store (attrace featurize --query); default: featurize data.query now");
  sc->add_option("-o,--out", sc_out, "Output directory to create (written atomically)")->required();
  sc->add_flag("--force", sc_force, "Replace the output directory if it exists");
  sc->add_option("--memory-limit", sc_memory, "Overrides attribution.memory_limit (e.g. 8GiB; speed only, never a result)");
  sc->add_option("--set", sc_sets, "Overrides any setting: section.key=value (TOML value), repeatable");
  sc->add_flag("-q,--quiet", quiet, "No progress or info messages on stderr");
  attrace::cli::add_registry_options(sc, sc_registry);

  // demo
  auto* demo = app.add_subcommand("demo", "Build a scenario from real data, train, attribute, print the vector");
  attrace::cli::DemoOptions demo_opts;
  demo->add_option("--dir", demo_opts.dir, "Work directory (inputs, checkpoints, report)")->capture_default_str();
  demo->add_flag("-q,--quiet", quiet, "No progress or info messages on stderr");
  attrace::cli::DemoLmOptions demo_lm;
  bool demo_lm_on = false;
  demo->add_flag("--lm", demo_lm_on, "The language-model demo instead: a GPT on Debian's fortunes (docs/lm.md; --dir default attrace-demo-lm)");
  demo->add_flag("--quick", demo_lm.quick, "With --lm: a tiny model and few fortunes (seconds; for tests)");

  // import csv
  auto* imp = app.add_subcommand("import", "Import data into the attrace dataset format");
  imp->require_subcommand(1);
  auto* csv = imp->add_subcommand("csv", "CSV examples (+ CSV tranche table) to an HDF5 dataset");
  attrace::connectors::CsvImportOptions co;
  csv->add_option("--examples", co.examples_csv, "Examples CSV (header row)")->required()->check(CLI::ExistingFile);
  csv->add_option("--tranches", co.tranches_csv, "Tranche table CSV: id,account[,name][,license] (omit for query sets)")
      ->check(CLI::ExistingFile);
  csv->add_option("-o,--out", co.output_h5, "Dataset file to write (.h5)")->required();
  csv->add_option("--target-column", co.target_column, "Column holding the target")->capture_default_str();
  csv->add_option("--tranche-column", co.tranche_column, "Column holding the tranche id")->capture_default_str();
  csv->add_option("--id-column", co.id_column, "Column holding the example id (row number if absent)")->capture_default_str();
  csv->add_flag("--regression", co.regression, "Float regression targets instead of integer class labels");
  csv->add_flag("--force", co.replace, "Replace OUT.h5 if it exists (otherwise an existing file is refused)");
  // import text (docs/cli.md#attrace-import-text)
  auto* txt = imp->add_subcommand("text", "A folder of UTF-8 text files to a token dataset (a tranche per file or subfolder)");
  attrace::connectors::TextImportOptions to;
  std::string to_split = "file", to_per = "file", to_tokenizer = "bytes";
  long long to_max = to.max_tokens, to_min = to.min_tokens, to_every = 0, to_pad = 0;
  txt->add_option("dir", to.dir, "Folder of text files (read recursively, in sorted order)")->required();
  txt->add_option("-o,--out", to.output_h5, "Training dataset to write (.h5)")->required();
  txt->add_option("--queries", to.queries_h5, "Held-out query dataset to write (with --holdout-every)");
  txt->add_option("--holdout-every", to_every, "Every K-th item (sorted order) goes to --queries")->check(integer_at_least(2));
  txt->add_option("--tranche-per", to_per, "One tranche per file or per first-level subfolder")->check(CLI::IsMember({"file", "folder"}))->capture_default_str();
  txt->add_option("--split", to_split, "Items: file, paragraph, line or delimiter:S (a line holding only S)")->capture_default_str();
  txt->add_option("--max-tokens", to_max, "T: longer items are cut into windows of T tokens")->check(integer_at_least(2))->capture_default_str();
  txt->add_option("--min-tokens", to_min, "Items with fewer tokens are dropped")->check(integer_at_least(2))->capture_default_str();
  txt->add_option("--glob", to.globs, "File names to take (fnmatch pattern, repeatable; default every file)");
  txt->add_option("--exclude", to.excludes, "File names to leave out (fnmatch pattern, repeatable)");
  txt->add_option("--tokenizer", to_tokenizer, "bytes: ids 0..255 are UTF-8 bytes")->check(CLI::IsMember({"bytes"}))->capture_default_str();
  txt->add_option("--vocab", to.vocab_file, "Vocabulary file: one entry per line, ids 256+ (greedy longest match)");
  txt->add_option("--accounts", to.accounts_csv, "Tranche table CSV: tranche,account[,name][,license] (omit: no tranches)");
  txt->add_option("--pad-id", to_pad, "Id written past an example's length")->check(integer_at_least(0))->capture_default_str();
  txt->add_flag("--force", to.replace, "Replace existing output files");

  auto* ledger = attrace::cli::add_ledger_commands(app);
  auto* verify = attrace::cli::add_verify_command(app);
  auto* eval = attrace::cli::add_eval_command(app);

  auto* ver = app.add_subcommand("version", "Print the engine version and git revision");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  setup_logging(quiet);
  // Commands that poll for stop signals (every batch and tile) stop cleanly on SIGINT/SIGTERM.
  if (*attr || *feat || *sc || *demo || *verify || *eval) attrace::install_interrupt_handlers();

  try {
    if (*ver) {
      std::printf("attrace %s (%s)\n", attrace::engine::engine_version().c_str(),
                  attrace::engine::engine_git_revision().c_str());
      committed = true;
      return 0;
    }
    if (*demo && demo_lm_on) {
      if (demo->count("--dir") > 0) demo_lm.dir = demo_opts.dir;
      demo_lm.quiet = quiet;
      return attrace::cli::run_demo_lm(demo_lm);
    }
    if (*demo) {
      demo_opts.quiet = quiet;
      return attrace::cli::run_demo(demo_opts);
    }
    if (*ledger) return attrace::cli::run_ledger_command(ledger);
    if (*verify) return attrace::cli::run_verify_command(quiet);
    if (*eval) return attrace::cli::run_eval_command(quiet);
    if (*txt) {
      attrace::connectors::parse_text_split(to_split, to);
      to.tranche_per = to_per == "folder" ? attrace::connectors::TranchePer::folder : attrace::connectors::TranchePer::file;
      to.max_tokens = to_max, to.min_tokens = to_min, to.holdout_every = to_every;
      ATTRACE_CHECK(to_pad <= INT32_MAX, attrace::InputError, "--pad-id must fit 32 bits, got " + std::to_string(to_pad));
      to.pad_id = static_cast<int32_t>(to_pad);
      const auto r = attrace::connectors::import_text(to);
      std::printf("wrote %lld examples x %lld tokens (%zu tranches%s) to %s", static_cast<long long>(r.train.size()), to_max,
                  to.accounts_csv.empty() ? size_t{0} : r.train.tranches.size(), to.accounts_csv.empty() ? ", no --accounts" : "",
                  to.output_h5.c_str());
      if (!to.queries_h5.empty()) std::printf(" and %lld to %s", static_cast<long long>(r.queries.size()), to.queries_h5.c_str());
      std::printf("\n%lld files, %lld items (%lld shorter than --min-tokens dropped, %lld cut into windows), %lld tokens, vocabulary %lld ids\n",
                  static_cast<long long>(r.files), static_cast<long long>(r.items), static_cast<long long>(r.dropped_short),
                  static_cast<long long>(r.long_items), static_cast<long long>(r.tokens), static_cast<long long>(r.vocab_size));
      return 0;
    }
    if (*csv) {
      const long long n = attrace::connectors::import_csv(co);
      std::printf("wrote %lld examples to %s\n", n, co.output_h5.c_str());
      return 0;
    }
    if (*feat) {
      const auto config = attrace::engine::load_config(feat_config, feat_sets);
      const auto r = attrace::engine::run_featurize(config, {feat_store, feat_query, feat_force, quiet});
      std::printf("%s %s: %lld examples x %zu checkpoints (%lld rows featurized by this run%s)\n",
                  r.rows_written == 0 ? "complete:" : "wrote", feat_store.c_str(), static_cast<long long>(r.rows),
                  r.checkpoints, static_cast<long long>(r.rows_written), r.resumed ? ", resumed" : "");
      committed = true;
      return 0;
    }
    if (*sc) {
      // Store paths go into the manifest (JSON): refuse what JSON cannot hold before any work.
      for (const auto* p : {&sc_store, &sc_query_store})
        if (attrace::connectors::first_invalid_utf8(*p) != std::string::npos)
          throw attrace::InputError("--store/--query-store: the path is not valid UTF-8; attrace records store paths in manifests");
      std::vector<std::string> overrides = sc_sets;
      if (!sc_memory.empty()) overrides.push_back("attribution.memory_limit=\"" + sc_memory + "\"");
      const auto config = attrace::engine::load_config(sc_config, overrides);
      const auto summary = attrace::engine::run_score(config, sc_store, sc_query_store,
                                                      {sc_out, sc_force, quiet, attrace::cli::check_registry_for_store(sc_registry, sc_store)});
      print_vector(summary);
      std::printf("wrote %s (report.json, report.html, attribution.csv, manifest.json%s)\n", sc_out.c_str(),
                  summary.wrote_scores ? ", scores.h5" : "");
      committed = true;
      return 0;
    }
    if (*attr) {
      std::vector<std::string> overrides = sets;
      auto add = [&](const char* key, const std::string& v) {
        if (!v.empty()) overrides.push_back(std::string(key) + "=\"" + v + "\"");
      };
      add("gradients.precision", precision);
      add("gradients.loss", loss);
      add("gradients.path", path);
      add("gradients.device", device);
      add("output.scores", scores);
      add("projection.kind", projection);
      add("attribution.memory_limit", memory_limit);
      if (proj_k > 0) overrides.push_back("projection.k=" + std::to_string(proj_k));
      if (batch_size > 0) overrides.push_back("gradients.batch_size=" + std::to_string(batch_size));
      if (top_k >= 0) overrides.push_back("attribution.top_k=" + std::to_string(top_k));
      const auto config = attrace::engine::load_config(config_path, overrides);
      const auto summary = attrace::engine::run_attribute(
          config, {out_dir, force, quiet, attrace::cli::check_registry_for_dataset(attr_registry, config.train_file)});
      print_vector(summary);
      std::printf("wrote %s (report.json, report.html, attribution.csv, manifest.json%s)\n", out_dir.c_str(),
                  summary.wrote_scores ? ", scores.h5" : "");
      committed = true;
      return 0;
    }
  } catch (const attrace::Interrupted& e) {
    std::fprintf(stderr, "attrace: %s\n", e.what());
    return 128 + e.signal_number();
  } catch (const attrace::InputError& e) {
    std::fprintf(stderr, "attrace: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attrace: failure: %s\n", e.what());
    return 1;
  }
  return 0;
}

int main(int argc, char** argv) {
#if !defined(__GLIBC__)
  prefer_passive_waits(argc, argv);
#endif
#if defined(__GLIBC__)
  // Batches allocate and free the same few-MiB buffers (tapes, products, feature rows) again and
  // again; glibc's defaults serve those from fresh mmap()s or trim them back to the kernel, and
  // every reuse then page-faults the memory in again (~10-20% of the chain path's time,
  // docs/performance.md). Buffers up to 32 MiB come from the heap and 256 MiB of free heap top is
  // kept; larger blocks (score matrices, stores) are still mapped and unmapped.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
  bool committed = false;
  const int rc = run_cli(argc, argv, committed);
#if !defined(ATTRACE_CLI_SANITIZED)
  // What exit() would still do after a committed command is run the static destructors and exit
  // handlers of ~80-290 libraries: LibTorch deregisters each of its operators one by one (~0.1 s of
  // the issue-10 workload's 1 s). Every output file is closed and renamed into place by now, so
  // flush what is buffered and leave without them. Sanitizer builds exit normally (leak checks).
  if (committed) {
    spdlog::shutdown();
    std::cout.flush();
    std::cerr.flush();
    std::fflush(nullptr);
    std::_Exit(rc);
  }
#endif
  return rc;
}
