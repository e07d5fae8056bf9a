#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/connectors/toml_util.hpp>
#include <attrace/error.hpp>

#include <cmath>
#include <filesystem>

namespace attrace::connectors {

TrainingRun read_run_file(const std::string& path) {
  const toml::table doc = parse_toml_file(path);
  TrainingRun run;
  run.path = path;
  const toml::array* list = doc["checkpoint"].as_array();
  ATTRACE_CHECK(list && !list->empty(), InputError,
                path + ": no [[checkpoint]] entries (each needs file, step and lr)");
  const std::filesystem::path base = std::filesystem::path(path).parent_path();
  for (size_t k = 0; k < list->size(); ++k) {
    const std::string where = path + ": [[checkpoint]] #" + std::to_string(k + 1);
    const toml::table* t = list->get(k)->as_table();
    ATTRACE_CHECK(t, InputError, where + " is not a table");
    for (auto&& [key, value] : *t) {
      (void)value;
      ATTRACE_CHECK(key == "file" || key == "step" || key == "lr", InputError,
                    where + ": unknown field '" + std::string(key.str()) + "' (expected file, step, lr)");
    }
    Checkpoint c;
    auto file = (*t)["file"].value<std::string>();
    ATTRACE_CHECK(file && !file->empty(), InputError, where + ": field 'file' (string) is missing");
    c.file = *file;
    std::filesystem::path p(c.file);
    c.path = p.is_absolute() ? p.string() : (base / p).string();
    ATTRACE_CHECK(first_invalid_utf8(c.path) == std::string::npos, InputError,
                  where + ": the checkpoint path (resolved against the run file's folder) is not valid UTF-8; attrace records it in manifests");
    // is_integer first: toml++ converts a float such as 1e22 to int64 without a range check (UB).
    ATTRACE_CHECK((*t)["step"].is_integer(), InputError, where + " ('" + c.file + "'): field 'step' (integer) is missing");
    c.step = *(*t)["step"].value<int64_t>();
    ATTRACE_CHECK((*t)["lr"].is_number(), InputError,
                  where + " ('" + c.file + "'): field 'lr' (number) is missing");
    c.lr = (*t)["lr"].value<double>().value();
    ATTRACE_CHECK(std::isfinite(c.lr) && c.lr >= 0, InputError,
                  where + " ('" + c.file + "'): lr must be finite and >= 0, got " + readable_number(c.lr));
    if (!run.checkpoints.empty())
      ATTRACE_CHECK(c.step > run.checkpoints.back().step, InputError,
                    where + " ('" + c.file + "'): steps must increase (" + std::to_string(c.step) +
                        " after " + std::to_string(run.checkpoints.back().step) + ")");
    std::error_code ec;
    ATTRACE_CHECK(std::filesystem::is_regular_file(c.path, ec), InputError,
                  where + ": checkpoint file '" + c.path + "' is missing or not a file");
    c.sha256 = sha256_file(c.path);
    run.checkpoints.push_back(std::move(c));
  }
  run.sha256 = sha256_file(path);
  return run;
}

}  // namespace attrace::connectors
