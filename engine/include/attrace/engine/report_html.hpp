#pragma once
// report.html: the attribution run as one self-contained page for contributors and auditors
// (inline CSS and SVG, no network). Format: docs/formats.md#reporthtml.
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace attrace::engine {

/// HTML-escapes user text for element content and quoted attributes alike; invalid UTF-8 and
/// control characters become U+FFFD (shared by report.html and eval.html).
std::string html_escape(std::string_view s);

/// The HTML page for a run, rendered from its report.json and manifest.json documents; the same
/// documents always give the same bytes. Throws InputError naming the field when a present field
/// has the wrong type or a document has the wrong format; absent optional fields are left out.
std::string report_html(const nlohmann::json& report, const nlohmann::json& manifest);

}  // namespace attrace::engine
