#pragma once
// report.html: the attribution run as one self-contained page for contributors and auditors
// (inline CSS and SVG, no network). Format: docs/formats.md#reporthtml.
#include <nlohmann/json.hpp>

#include <string>

namespace attrace::engine {

/// The HTML page for a run, rendered from its report.json and manifest.json documents; the same
/// documents always give the same bytes. Throws InputError naming the field when a present field
/// has the wrong type or a document has the wrong format; absent optional fields are left out.
std::string report_html(const nlohmann::json& report, const nlohmann::json& manifest);

}  // namespace attrace::engine
