// report.html: renders report.json and manifest.json as one self-contained page. Every string from
// the documents is user data (tranche ids, names, licenses, example ids) and goes through esc();
// nothing from them ever lands inside <script> or <style>. The page loads nothing: a
// Content-Security-Policy admits only its own inline script (by hash) and inline styles.
#include <attrace/engine/report_html.hpp>

#include <attrace/connectors/hash.hpp>
#include <attrace/error.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace attrace::engine {
namespace {

using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Text

/// HTML-escapes user text for element content and quoted attributes alike. Invalid UTF-8 and
/// control characters become U+FFFD, so no input can change the page's structure or encoding.
std::string esc(std::string_view s) {
  static const char* const replacement = "\xEF\xBF\xBD";
  std::string o;
  o.reserve(s.size() + 16);
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      switch (c) {
        case '&': o += "&amp;"; break;
        case '<': o += "&lt;"; break;
        case '>': o += "&gt;"; break;
        case '"': o += "&quot;"; break;
        case '\'': o += "&#39;"; break;
        default:
          if ((c < 0x20 && c != '\t' && c != '\n') || c == 0x7F) o += replacement;
          else o += static_cast<char>(c);
      }
      ++i;
      continue;
    }
    // Multi-byte sequence: accept only well-formed, shortest-form UTF-8 without surrogates.
    size_t len = 0;
    uint32_t cp = 0;
    if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07;
    bool ok = len != 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      ok = (p[i + k] & 0xC0) == 0x80;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (ok) ok = !(len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) && !(len == 4 && (cp < 0x10000 || cp > 0x10FFFF));
    // C1 controls are as invisible and as unwelcome as C0 ones.
    if (ok && cp >= 0x80 && cp <= 0x9F) ok = false;
    if (ok) {
      o.append(s.data() + i, len);
      i += len;
    } else {
      o += replacement;
      ++i;
    }
  }
  return o;
}

/// The first max_chars code points of s (on an escaped-later raw string), with an ellipsis when cut.
std::string truncate(std::string_view s, size_t max_chars) {
  size_t chars = 0, i = 0;
  while (i < s.size()) {
    if (chars == max_chars) return std::string(s.substr(0, i)) + "\xE2\x80\xA6";
    ++i;
    while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) ++i;
    ++chars;
  }
  return std::string(s);
}

/// 0x1234abcd…9f0e: enough of an address to recognise it; the full one sits in a title.
std::string short_account(const std::string& a) {
  if (a.size() <= 16) return a;
  return a.substr(0, 10) + "\xE2\x80\xA6" + a.substr(a.size() - 4);
}

std::string short_hash(const std::string& h) { return h.size() <= 16 ? h : h.substr(0, 16); }

// ---------------------------------------------------------------------------------------------
// Numbers (std::to_chars: locale-independent, so the bytes never depend on the environment)

std::string chars_fixed(double v, int decimals) {
  char buf[400];
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, decimals);
  return std::string(buf, r.ptr);
}
std::string chars_sci(double v, int decimals) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific, decimals);
  return std::string(buf, r.ptr);
}
/// Shortest text that reads back as the same double: what an auditor compares.
std::string exact(double v) {
  if (!std::isfinite(v)) return "non-finite";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

/// 1234567 -> 1,234,567 (applied to the integer digits of a formatted number).
std::string group_thousands(const std::string& s) {
  size_t start = (!s.empty() && s[0] == '-') ? 1 : 0;
  size_t end = s.find('.');
  if (end == std::string::npos) end = s.size();
  std::string o = s.substr(0, start);
  for (size_t i = start; i < end; ++i) {
    o += s[i];
    const size_t left = end - i - 1;
    if (left > 0 && left % 3 == 0) o += ',';
  }
  return o + s.substr(end);
}

/// About four significant digits, for reading; exact() goes into the title next to it.
std::string approx(double v) {
  if (!std::isfinite(v)) return "\xE2\x80\x94";
  if (v == 0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e12 || a < 1e-3) return chars_sci(v, 3);
  const int e = static_cast<int>(std::floor(std::log10(a)));
  return group_thousands(chars_fixed(v, std::max(0, 3 - e)));
}

std::string percent(double share) {
  if (!std::isfinite(share)) return "\xE2\x80\x94";
  if (share == 0) return "0%";
  if (share > 0 && share < 0.0001) return "&lt;0.01%";
  return chars_fixed(share * 100, 2) + "%";
}

std::string integer(int64_t v) { return group_thousands(std::to_string(v)); }

/// A <td> holding a number: readable text, the exact value for sorting and in the tooltip.
std::string num_cell(const std::optional<double>& v, const std::string& cls = "") {
  std::string c = cls.empty() ? "n" : "n " + cls;
  if (!v) return "<td class=\"" + c + " na\" data-v=\"\">\xE2\x80\x94</td>";
  return "<td class=\"" + c + "\" data-v=\"" + exact(*v) + "\" title=\"" + exact(*v) + "\">" + approx(*v) + "</td>";
}
std::string int_cell(const std::optional<int64_t>& v) {
  if (!v) return "<td class=\"n na\" data-v=\"\">\xE2\x80\x94</td>";
  return "<td class=\"n\" data-v=\"" + std::to_string(*v) + "\">" + integer(*v) + "</td>";
}
std::string pct_cell(const std::optional<double>& v, bool hot = false, const std::string& more = "") {
  if (!v) return "<td class=\"n na\" data-v=\"\">\xE2\x80\x94</td>";
  return std::string(hot ? "<td class=\"n hot\"" : "<td class=\"n\"") + " data-v=\"" + exact(*v) + "\" title=\"" + exact(*v) +
         more + "\">" + percent(*v) + "</td>";
}

// ---------------------------------------------------------------------------------------------
// Reading the documents: absent or null fields are optional; a present field of the wrong type is
// an InputError naming the document and the path.

std::string at(const std::string& where, const char* key) { return where + "." + key; }
std::string at(const std::string& where, size_t i) { return where + "[" + std::to_string(i) + "]"; }

const json* get(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}
[[noreturn]] void wrong_type(const std::string& where, const char* expected, const json& got) {
  throw InputError(where + ": expected " + expected + ", got " + got.type_name());
}
std::optional<double> opt_num(const json& obj, const char* key, const std::string& where) {
  const json* v = get(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) wrong_type(at(where, key), "a number", *v);
  return v->get<double>();
}
std::optional<int64_t> opt_int(const json& obj, const char* key, const std::string& where) {
  const json* v = get(obj, key);
  if (!v) return std::nullopt;
  if (v->is_number_integer()) return v->get<int64_t>();
  // Steps are written as decimal strings (they may exceed 2^53); counts as plain integers.
  if (v->is_string()) {
    const auto& s = v->get_ref<const std::string&>();
    int64_t x = 0;
    const auto r = std::from_chars(s.data(), s.data() + s.size(), x);
    if (r.ec == std::errc() && r.ptr == s.data() + s.size()) return x;
  }
  wrong_type(at(where, key), "an integer", *v);
}
std::string opt_str(const json& obj, const char* key, const std::string& where) {
  const json* v = get(obj, key);
  if (!v) return "";
  if (!v->is_string()) wrong_type(at(where, key), "a string", *v);
  return v->get<std::string>();
}
const json& opt_arr(const json& obj, const char* key, const std::string& where) {
  static const json empty = json::array();
  const json* v = get(obj, key);
  if (!v) return empty;
  if (!v->is_array()) wrong_type(at(where, key), "an array", *v);
  return *v;
}
const json& opt_obj(const json& obj, const char* key, const std::string& where) {
  static const json empty = json::object();
  const json* v = get(obj, key);
  if (!v) return empty;
  if (!v->is_object()) wrong_type(at(where, key), "an object", *v);
  return *v;
}
/// A count from a pair table: integers as integers, anything else as a number.
std::string count_text(const std::optional<double>& v) {
  if (!v) return "\xE2\x80\x94";
  if (*v == std::floor(*v) && std::fabs(*v) < 9e15) return integer(static_cast<int64_t>(*v));
  return approx(*v);
}

/// Any scalar as display text: strings as they are, the rest in JSON notation.
std::string scalar_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) return exact(v.get<double>());
  if (v.is_array()) {
    std::string s;
    for (const auto& e : v) s += (s.empty() ? "" : ", ") + scalar_text(e);
    return "[" + s + "]";
  }
  return v.dump(-1, ' ', false, json::error_handler_t::replace);
}

/// One row of a tranche-pair table (exact or near duplicates).
struct PairRow {
  std::string a, b;
  std::optional<double> na, nb, fa, fb;  ///< examples involved and fractions, A then B
  bool flagged = false;                  ///< the report's own verdict (exact duplicates only)
};

struct TrancheRow {
  int64_t index = 0;
  std::string id, account, name, license;
  std::optional<int64_t> examples, internal_duplicates, near_duplicate_examples, cross_duplicate_examples, outlier_examples;
  std::optional<double> share, total_influence, mean_influence, positive_mass;
  std::optional<double> self_median, self_ratio, near_duplicate_rate, outlier_share;
  std::vector<std::string> flags;
  bool has_quality = false;
  // The reward rules (docs/rewards.md), when the report carries them.
  bool has_rewards = false;
  std::optional<double> mass_before, mass_after_duplicates, hold_factor, hold_outlier_share;
  std::optional<int64_t> uncredited_examples;
};

std::vector<TrancheRow> read_tranches(const json& report) {
  std::vector<TrancheRow> rows;
  const std::string w = "report.json: tranches";
  const json& ts = opt_arr(report, "tranches", "report.json");
  for (size_t i = 0; i < ts.size(); ++i) {
    const std::string wi = at(w, i);
    const json& t = ts[i];
    if (!t.is_object()) wrong_type(wi, "an object", t);
    TrancheRow r;
    r.index = opt_int(t, "index", wi).value_or(static_cast<int64_t>(i));
    r.id = opt_str(t, "id", wi);
    r.account = opt_str(t, "account", wi);
    r.name = opt_str(t, "name", wi);
    r.license = opt_str(t, "license", wi);
    r.examples = opt_int(t, "examples", wi);
    r.share = opt_num(t, "share", wi);
    r.total_influence = opt_num(t, "total_influence", wi);
    r.mean_influence = opt_num(t, "mean_influence", wi);
    r.positive_mass = opt_num(t, "positive_mass", wi);
    const json& si = opt_obj(t, "self_influence", wi);
    r.self_median = opt_num(si, "median", at(wi, "self_influence"));
    r.self_ratio = opt_num(si, "ratio_to_median", at(wi, "self_influence"));
    r.internal_duplicates = opt_int(t, "internal_duplicates", wi);
    if (const json* q = get(t, "quality")) {
      if (!q->is_object()) wrong_type(at(wi, "quality"), "an object", *q);
      r.has_quality = true;
      r.near_duplicate_examples = opt_int(*q, "near_duplicate_examples", at(wi, "quality"));
      r.near_duplicate_rate = opt_num(*q, "near_duplicate_rate", at(wi, "quality"));
      r.cross_duplicate_examples = opt_int(*q, "cross_duplicate_examples", at(wi, "quality"));
      r.outlier_examples = opt_int(*q, "outlier_examples", at(wi, "quality"));
      r.outlier_share = opt_num(*q, "outlier_share", at(wi, "quality"));
    }
    if (const json* rw = get(t, "rewards")) {
      if (!rw->is_object()) wrong_type(at(wi, "rewards"), "an object", *rw);
      const std::string wr = at(wi, "rewards");
      r.has_rewards = true;
      r.mass_before = opt_num(*rw, "mass_before", wr);
      r.mass_after_duplicates = opt_num(*rw, "mass_after_duplicate_credit", wr);
      r.uncredited_examples = opt_int(*rw, "uncredited_examples", wr);
      const json& qh = opt_obj(*rw, "quality_hold", wr);
      r.hold_factor = opt_num(qh, "factor", at(wr, "quality_hold"));
      r.hold_outlier_share = opt_num(qh, "outlier_share", at(wr, "quality_hold"));
    }
    const json& fl = opt_arr(t, "flags", wi);
    for (size_t f = 0; f < fl.size(); ++f) {
      if (!fl[f].is_string()) wrong_type(at(at(wi, "flags"), f), "a string", fl[f]);
      r.flags.push_back(fl[f].get<std::string>());
    }
    rows.push_back(std::move(r));
  }
  if (!rows.empty()) return rows;
  // A report without the per-tranche section still has the vector itself.
  const json& av = opt_arr(report, "attribution", "report.json");
  for (size_t i = 0; i < av.size(); ++i) {
    const std::string wi = at("report.json: attribution", i);
    if (!av[i].is_object()) wrong_type(wi, "an object", av[i]);
    TrancheRow r;
    r.index = static_cast<int64_t>(i);
    r.id = opt_str(av[i], "tranche", wi);
    r.account = opt_str(av[i], "account", wi);
    r.share = opt_num(av[i], "share", wi);
    rows.push_back(std::move(r));
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// Page pieces

/// Flag -> CSS class and the sentence that explains it (docs/formats.md#flags).
struct FlagInfo {
  const char* cls;
  std::string meaning;
};
/// The thresholds the flag sentences quote, as display text.
struct FlagThresholds {
  std::string duplicate = "the duplicate threshold", cosine = "the threshold", outlier = "twice the expected share";
};
FlagInfo flag_info(const std::string& f, const FlagThresholds& t = {}) {
  if (f == "negative_influence") return {"bad", "the tranche's total influence on the query set is negative"};
  if (f == "high_self_influence")
    return {"warn", "its median self-influence is more than 2\xC3\x97 the training set's median (typical of mislabeled or "
                    "out-of-distribution data)"};
  if (f == "self_influence_outliers")
    return {"warn", "more than " + t.outlier + " of its examples are self-influence outliers (see below)"};
  if (f == "internal_duplicates") return {"dup", "the tranche repeats some of its own examples"};
  if (f == "quality_hold")
    return {"warn", "its share of the top self-influence examples (counted once per duplicate group) exceeds the quality-hold "
                    "threshold: its mass is multiplied by threshold / share (docs/rewards.md)"};
  if (f.rfind("duplicates:", 0) == 0)
    return {"dup", "at least " + t.duplicate + " of this or the other tranche's examples are exact copies of examples in the other"};
  if (f.rfind("near_duplicates:", 0) == 0)
    return {"dup", "at least " + t.duplicate + " of this or the other tranche's examples have near copies (gradient-sketch "
                   "cosine \xE2\x89\xA5 " + t.cosine + ") in the other, and they are not flagged as exact duplicates"};
  return {"other", "a flag this page does not know; see docs/formats.md"};
}

std::string flag_chips(const std::vector<std::string>& flags) {
  std::string o;
  for (const auto& f : flags) o += "<span class=\"chip f-" + std::string(flag_info(f).cls) + "\">" + esc(f) + "</span>";
  return o;
}

/// A "nice" axis end for the largest share: 1, 2, 2.5 or 5 times a power of ten.
double axis_end(double max_share) {
  if (!(max_share > 0)) return 1.0;
  const double p = std::pow(10.0, std::floor(std::log10(max_share)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * p >= max_share * (1 - 1e-12)) return std::min(1.0, m * p);
  return 1.0;
}
std::string tick_label(double v) {
  std::string s = chars_fixed(v * 100, 3);
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s + "%";
}

/// Horizontal bars of the attribution vector; over kMaxBars tranches, the largest ones and one
/// bar for the rest (the table below lists every tranche).
std::string bar_chart(const std::vector<TrancheRow>& rows) {
  constexpr size_t kMaxBars = 40;
  struct Bar {
    std::string label, sub, title;
    double share;
    bool flagged, rest;
  };
  std::vector<size_t> order(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) order[i] = i;
  std::vector<Bar> bars;
  double rest_share = 0;
  size_t rest_count = 0;
  if (rows.size() > kMaxBars) {
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return rows[a].share.value_or(0) > rows[b].share.value_or(0); });
    for (size_t k = kMaxBars - 1; k < order.size(); ++k) rest_share += rows[order[k]].share.value_or(0), ++rest_count;
    order.resize(kMaxBars - 1);
  }
  for (size_t i : order) {
    const auto& r = rows[i];
    std::string title = r.id + " (" + r.account + "): " + exact(r.share.value_or(0));
    bars.push_back({truncate(r.id, 30), short_account(r.account), title, r.share.value_or(0), !r.flags.empty(), false});
  }
  if (rest_count) bars.push_back({std::to_string(rest_count) + " more tranches", "listed in the table", "", rest_share, false, true});

  double max_share = 0;
  for (const auto& b : bars) max_share = std::max(max_share, b.share);
  const double end = axis_end(max_share);
  const int width = 960, label_w = 250, bar_x = 262, bar_w = width - bar_x - 86, top = 26, row_h = 36;
  const int height = top + static_cast<int>(bars.size()) * row_h + 8;
  std::string o = "<svg class=\"chart\" viewBox=\"0 0 " + std::to_string(width) + " " + std::to_string(height) +
                  "\" role=\"img\" aria-label=\"Attribution share per tranche\">";
  o += "<defs><clipPath id=\"label-clip\"><rect x=\"0\" y=\"0\" width=\"" + std::to_string(label_w) + "\" height=\"" +
       std::to_string(height) + "\"/></clipPath></defs>";
  for (int k = 0; k <= 5; ++k) {
    const double v = end * k / 5;
    const std::string x = chars_fixed(bar_x + bar_w * (v / end), 1);
    o += "<line class=\"grid\" x1=\"" + x + "\" y1=\"" + std::to_string(top - 6) + "\" x2=\"" + x + "\" y2=\"" +
         std::to_string(height - 6) + "\"/>";
    o += "<text class=\"tick\" x=\"" + x + "\" y=\"14\" text-anchor=\"middle\">" + tick_label(v) + "</text>";
  }
  for (size_t i = 0; i < bars.size(); ++i) {
    const auto& b = bars[i];
    const int y = top + static_cast<int>(i) * row_h;
    const double w = b.share > 0 ? std::max(1.5, bar_w * std::min(1.0, b.share / end)) : 0;
    o += "<g class=\"row\">";
    if (!b.title.empty()) o += "<title>" + esc(b.title) + "</title>";
    o += "<g clip-path=\"url(#label-clip)\"><text class=\"lbl" + std::string(b.rest ? " rest" : "") + "\" x=\"0\" y=\"" +
         std::to_string(y + 14) + "\">" + esc(b.label) + (b.flagged ? " <tspan class=\"flagmark\">\xE2\x9A\x91</tspan>" : "") +
         "</text><text class=\"acct\" x=\"0\" y=\"" + std::to_string(y + 29) + "\">" + esc(b.sub) + "</text></g>";
    o += "<rect class=\"track\" x=\"" + std::to_string(bar_x) + "\" y=\"" + std::to_string(y + 8) + "\" width=\"" +
         std::to_string(bar_w) + "\" height=\"20\" rx=\"3\"/>";
    if (w > 0)
      o += "<rect class=\"bar" + std::string(b.flagged ? " flagged" : b.rest ? " rest" : "") + "\" x=\"" +
           std::to_string(bar_x) + "\" y=\"" + std::to_string(y + 8) + "\" width=\"" + chars_fixed(w, 1) +
           "\" height=\"20\" rx=\"3\"/>";
    o += "<text class=\"val\" x=\"" + chars_fixed(bar_x + w + 6, 1) + "\" y=\"" + std::to_string(y + 23) + "\">" +
         percent(b.share) + "</text></g>";
  }
  return o + "</svg>";
}

const char* const kStyle = R"CSS(
:root{--bg:#f6f7f9;--panel:#fff;--ink:#1b1f24;--muted:#5f6b7a;--line:#e3e6ea;--zebra:#fafbfc;
--accent:#2456c9;--bar:#3b6fe0;--track:#eef1f5;--warn:#b45309;--warn-bg:#fef3c7;--bad:#b91c1c;--bad-bg:#fee2e2;
--dup:#6d28d9;--dup-bg:#ede9fe;--other-bg:#e5e7eb;--mono:ui-monospace,"SFMono-Regular","DejaVu Sans Mono",Menlo,Consolas,monospace}
@media (prefers-color-scheme:dark){:root{--bg:#111418;--panel:#1a1e24;--ink:#e6e9ee;--muted:#98a2b3;--line:#2c323b;
--zebra:#1e232a;--accent:#7aa2ff;--bar:#5b8cff;--track:#252b33;--warn:#fbbf24;--warn-bg:#3a2a0a;--bad:#f87171;
--bad-bg:#3b1212;--dup:#c4b5fd;--dup-bg:#2a1f4a;--other-bg:#2c323b}}
*{box-sizing:border-box}
html{background:var(--bg);color:var(--ink);font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
body{margin:0}
header.top{background:var(--panel);border-bottom:1px solid var(--line)}
.wrap{max-width:1200px;margin:0 auto;padding:0 24px}
header.top .wrap{padding-top:20px;padding-bottom:18px}
.brand{font-weight:700;letter-spacing:.08em;text-transform:uppercase;font-size:12px;color:var(--accent)}
h1{font-size:24px;margin:2px 0 6px}
h2{font-size:18px;margin:0 0 4px}
h3{font-size:15px;margin:18px 0 6px}
.sub,.note{color:var(--muted)}
.note{margin:0 0 12px}
nav.toc{margin-top:10px;display:flex;gap:16px;flex-wrap:wrap;font-size:13px}
nav.toc a{color:var(--accent);text-decoration:none}
section{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:18px 20px;margin:18px 0}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin:18px 0}
.card{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.card .k{color:var(--muted);font-size:12px}
.card .v{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums}
.card.alert .v{color:var(--warn)}
svg.chart{width:100%;height:auto;display:block}
svg .grid{stroke:var(--line);stroke-width:1}
svg .tick{fill:var(--muted);font-size:11px}
svg .lbl{fill:var(--ink);font-size:13px;font-weight:600}
svg .lbl.rest{font-style:italic;font-weight:400}
svg .acct{fill:var(--muted);font-size:11px;font-family:var(--mono)}
svg .track{fill:var(--track)}
svg .bar{fill:var(--bar)}
svg .bar.flagged{fill:var(--warn)}
svg .bar.rest{fill:var(--muted)}
svg .val{fill:var(--ink);font-size:12px;font-variant-numeric:tabular-nums}
svg .flagmark{fill:var(--warn)}
.legend{display:flex;gap:16px;font-size:12px;color:var(--muted);margin-top:6px}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.sw.ok{background:var(--bar)}.sw.fl{background:var(--warn)}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{font-size:12px;color:var(--muted);font-weight:600;line-height:1.3}
tbody tr:nth-child(even){background:var(--zebra)}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.n,td.acct{white-space:nowrap}
td.na{color:var(--muted)}
td.hot{color:var(--warn);font-weight:600}
.mono,.hash{font-family:var(--mono);font-size:12px}
.hash,.id,.chip,pre{overflow-wrap:anywhere}
.tname{font-weight:600}
.small{font-size:12px;color:var(--muted)}
.chip{display:inline-block;max-width:100%;border-radius:10px;padding:0 8px;margin:1px 4px 1px 0;font-size:12px;background:var(--other-bg)}
.chip.f-warn{background:var(--warn-bg);color:var(--warn)}
.chip.f-bad{background:var(--bad-bg);color:var(--bad)}
.chip.f-dup{background:var(--dup-bg);color:var(--dup)}
.chip.t{background:var(--track);color:var(--ink)}
.chip.t.flagged{background:var(--warn-bg);color:var(--warn)}
.queries{display:grid;grid-template-columns:1fr;gap:14px}
.q{border:1px solid var(--line);border-radius:6px;padding:10px 12px}
.q h3{margin:0 0 6px;font-family:var(--mono);font-size:13px;word-break:break-all}
.q .lists{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:16px}
@media (max-width:860px){.q .lists{grid-template-columns:minmax(0,1fr)}}
.q h4{font-size:12px;color:var(--muted);margin:0 0 2px;font-weight:600}
dl.facts{display:grid;grid-template-columns:minmax(140px,max-content) minmax(0,1fr);gap:4px 18px;margin:0}
dl.facts dt{color:var(--muted)}
dl.facts dd{margin:0}
details{margin-top:12px}
summary{cursor:pointer;color:var(--accent)}
pre{font-family:var(--mono);font-size:12px;white-space:pre-wrap;word-break:break-all;background:var(--zebra);padding:10px;border-radius:6px}
footer{color:var(--muted);font-size:12px;padding:8px 0 30px}
html[data-js] th[data-sort]{cursor:pointer}
html[data-js] th[data-sort]::after{content:"\00a0\2195";opacity:.35}
th[aria-sort=ascending]::after{content:"\00a0\2191"!important;opacity:1!important}
th[aria-sort=descending]::after{content:"\00a0\2193"!important;opacity:1!important}
td.tr{min-width:200px}
td.kind{min-width:190px}
.flagrow{margin-top:3px}
@media print{html{background:#fff}section,.card{border-color:#ccc;break-inside:avoid}}
)CSS";

// Sorts tables by a clicked column (numbers by data-v, text otherwise), then marks the page as
// scripted; without it the page is complete, only unsortable.
const char* const kScript = R"JS(
(function(){
  var each=function(list,f){Array.prototype.forEach.call(list,f);};
  each(document.querySelectorAll('table.sortable'),function(t){
    var heads=t.tHead.rows[0].cells;
    each(t.tBodies[0].rows,function(r,i){r.setAttribute('data-i',i);});
    each(heads,function(th,col){
      var kind=th.getAttribute('data-sort');
      if(!kind)return;
      th.tabIndex=0;
      var go=function(){
        var up=th.getAttribute('aria-sort')!=='ascending';
        each(heads,function(h){h.removeAttribute('aria-sort');});
        th.setAttribute('aria-sort',up?'ascending':'descending');
        var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
        var key=function(r){var c=r.cells[col],v=c.getAttribute('data-v');
          if(kind==='num'){var x=parseFloat(v);return isNaN(x)?-Infinity:x;}
          return (v!==null?v:c.textContent).toLowerCase();};
        rows.sort(function(a,b){var x=key(a),y=key(b);
          var d=x<y?-1:x>y?1:0;if(!up)d=-d;
          return d||(+a.getAttribute('data-i'))-(+b.getAttribute('data-i'));});
        each(rows,function(r){body.appendChild(r);});
      };
      th.addEventListener('click',go);
      th.addEventListener('keydown',function(e){if(e.key==='Enter'||e.key===' '){e.preventDefault();go();}});
    });
  });
  document.documentElement.setAttribute('data-js','ready');
})();
)JS";

/// base64 of the bytes a lowercase hex string spells (for the CSP script hash).
std::string hex_to_base64(const std::string& hex) {
  static const char* const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::vector<unsigned char> bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) bytes.push_back(static_cast<unsigned char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  std::string o;
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t v = static_cast<uint32_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<uint32_t>(bytes[i + 1]) << 8;
    if (i + 2 < bytes.size()) v |= bytes[i + 2];
    o += alphabet[(v >> 18) & 63];
    o += alphabet[(v >> 12) & 63];
    o += i + 1 < bytes.size() ? alphabet[(v >> 6) & 63] : '=';
    o += i + 2 < bytes.size() ? alphabet[v & 63] : '=';
  }
  return o;
}

std::string method_text(const std::string& method, const json& projection, const std::string& where) {
  const std::string kind = opt_str(projection, "kind", where);
  if (method == "tracin_exact") return "TracInCP, exact gradients";
  if (method == "tracin_projected") {
    std::string s = "TracInCP, " + (kind.empty() ? std::string("projected") : kind + "-projected") + " features";
    if (auto k = opt_int(projection, "k", where)) s += ", k = " + integer(*k);
    return s;
  }
  return method;
}

std::string dd_row(const std::string& term, const std::string& html) { return "<dt>" + term + "</dt><dd>" + html + "</dd>"; }

}  // namespace

std::string html_escape(std::string_view s) { return esc(s); }

std::string report_html(const json& report, const json& manifest) {
  if (!report.is_object()) wrong_type("report.json", "an object", report);
  if (!manifest.is_object()) wrong_type("manifest.json", "an object", manifest);
  const std::string rformat = opt_str(report, "format", "report.json");
  if (rformat != "attrace.report/1")
    throw InputError("report.json: format: expected \"attrace.report/1\", got \"" + rformat + "\"");
  const std::string mformat = opt_str(manifest, "format", "manifest.json");
  if (mformat != "attrace.manifest/1")
    throw InputError("manifest.json: format: expected \"attrace.manifest/1\", got \"" + mformat + "\"");

  const std::vector<TrancheRow> rows = read_tranches(report);
  const json& counts = opt_obj(report, "counts", "report.json");
  const json& engine = opt_obj(manifest, "engine", "manifest.json");
  const json& settings = opt_obj(manifest, "settings", "manifest.json");
  const json& projection = opt_obj(manifest, "projection", "manifest.json");
  const json& quality = opt_obj(report, "quality", "report.json");
  const json& near = opt_obj(quality, "near_duplicates", "report.json: quality");
  const json& outliers = opt_obj(quality, "outliers", "report.json: quality");
  std::string method = opt_str(report, "method", "report.json");
  if (method.empty()) method = opt_str(manifest, "method", "manifest.json");
  std::string policy = opt_str(report, "negative_policy", "report.json");
  if (policy.empty()) policy = opt_str(manifest, "negative_policy", "manifest.json");
  const std::string version = opt_str(engine, "version", "manifest.json: engine");
  const std::string revision = opt_str(engine, "git_revision", "manifest.json: engine");
  const json& attribution_settings = opt_obj(settings, "attribution", "manifest.json: settings");
  const std::optional<double> dup_threshold = opt_num(attribution_settings, "duplicate_threshold", "manifest.json: settings.attribution");
  const std::optional<double> cos_threshold = opt_num(near, "cosine_threshold", "report.json: quality.near_duplicates");
  FlagThresholds thresholds;
  if (dup_threshold) thresholds.duplicate = percent(*dup_threshold);
  if (cos_threshold) thresholds.cosine = exact(*cos_threshold);
  std::optional<double> outlier_limit;  // outlier share above which a tranche is flagged
  {
    const std::string w = "report.json: quality.outliers";
    const auto top = opt_num(outliers, "top_fraction", w), ratio = opt_num(outliers, "flag_ratio", w);
    if (top && ratio) outlier_limit = *top * *ratio, thresholds.outlier = percent(*outlier_limit);
  }
  const std::string& dup_text = thresholds.duplicate;
  const std::string& cos_text = thresholds.cosine;

  std::map<std::string, bool> flagged;  // tranche id -> carries a flag (for the query lists)
  size_t n_flagged = 0;
  bool any_quality = false;
  for (const auto& r : rows) {
    flagged[r.id] = !r.flags.empty();
    n_flagged += r.flags.empty() ? 0 : 1;
    any_quality = any_quality || r.has_quality;
  }

  std::string h;
  h.reserve(64 * 1024);
  const std::string script_hash = hex_to_base64(connectors::sha256_hex(kScript));
  h += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
       "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
       "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-" +
       script_hash + "'; base-uri 'none'; form-action 'none'\">";
  h += "<meta name=\"generator\" content=\"attrace " + esc(version) + "\">";
  h += "<title>attrace report \xE2\x80\x94 " + integer(static_cast<int64_t>(rows.size())) + " tranches</title><style>" +
       std::string(kStyle) + "</style></head><body>\n";

  // Header: what this run is, in one line.
  h += "<header class=\"top\"><div class=\"wrap\"><div class=\"brand\">attrace</div><h1>Attribution report</h1><p class=\"sub\">" +
       esc(method_text(method, projection, "manifest.json: projection"));
  if (!policy.empty()) h += " \xC2\xB7 negative influence: " + esc(policy);
  const json& math = opt_obj(manifest, "math", "manifest.json");
  if (auto p = opt_str(math, "precision", "manifest.json: math"); !p.empty()) h += " \xC2\xB7 " + esc(p);
  if (!version.empty()) h += " \xC2\xB7 attrace " + esc(version);
  if (!revision.empty()) h += " (<span class=\"mono\">" + esc(truncate(revision, 12)) + "</span>)";
  h += "</p><nav class=\"toc\"><a href=\"#attribution\">Attribution</a><a href=\"#tranches\">Tranches</a>"
       "<a href=\"#quality\">Data quality</a><a href=\"#queries\">Queries</a><a href=\"#manifest\">Reproducibility</a></nav>"
       "</div></header>\n<main class=\"wrap\">\n";

  // Key numbers.
  auto card = [&](const std::string& k, const std::string& v, bool alert = false) {
    h += "<div class=\"card" + std::string(alert ? " alert" : "") + "\"><div class=\"k\">" + k + "</div><div class=\"v\">" + v + "</div></div>";
  };
  h += "<div class=\"cards\">";
  if (auto v = opt_int(counts, "train", "report.json: counts")) card("Training examples", integer(*v));
  if (auto v = opt_int(counts, "query", "report.json: counts")) card("Queries", integer(*v));
  card("Tranches", integer(static_cast<int64_t>(rows.size())));
  if (auto v = opt_int(counts, "checkpoints", "report.json: counts")) card("Checkpoints", integer(*v));
  if (auto v = opt_int(counts, "gradient_dim", "report.json: counts")) card("Gradient dimension", integer(*v));
  if (auto v = opt_int(counts, "feature_dim", "report.json: counts"); v && method == "tracin_projected")
    card("Feature dimension", integer(*v));
  if (auto v = opt_num(report, "total_positive_mass", "report.json")) card("Total positive mass", approx(*v));
  card("Flagged tranches", integer(static_cast<int64_t>(n_flagged)) + " of " + integer(static_cast<int64_t>(rows.size())), n_flagged > 0);
  h += "</div>\n";

  // The attribution vector.
  h += "<section id=\"attribution\"><h2>Attribution vector</h2><p class=\"note\">Each tranche's share of the positive "
       "influence on the query set";
  if (!policy.empty()) h += " (negative-influence policy <b>" + esc(policy) + "</b>)";
  h += ". Hover a bar for the exact value.</p>";
  bool any_positive = false;
  for (const auto& r : rows) any_positive = any_positive || r.share.value_or(0) > 0;
  if (rows.empty()) h += "<p>This report lists no tranches.</p>";
  else {
    if (!any_positive) h += "<p class=\"note\">No tranche has positive influence, so every share is 0.</p>";
    h += bar_chart(rows);
    h += "<div class=\"legend\"><span><span class=\"sw ok\"></span>share</span><span><span class=\"sw fl\"></span>"
         "\xE2\x9A\x91 tranche carries a data-quality flag</span></div>";
  }
  h += "</section>\n";

  // Per-tranche table. Positive mass gets a column only where the policy made it differ from
  // max(total influence, 0), so the common case keeps the table narrow enough for a laptop.
  bool show_mass = false, any_rewards = false;
  for (const auto& r : rows) {
    show_mass = show_mass || (r.positive_mass && r.total_influence && *r.positive_mass != std::max(*r.total_influence, 0.0));
    any_rewards = any_rewards || r.has_rewards;
  }
  show_mass = show_mass || any_rewards;
  h += "<section id=\"tranches\"><h2>Tranches</h2><p class=\"note\">Influence is summed over a tranche's examples and all "
       "queries. Self-influence \xC3\x97median is the tranche's median self-influence over the training set's";
  if (auto m = opt_num(report, "self_influence_median", "report.json")) h += " (" + approx(*m) + ")";
  h += "; hover it for the tranche's own median.";
  if (const json* rw = get(report, "rewards"); rw && rw->is_object()) {
    // The reward rules in one sentence; the columns show what they did to each tranche.
    h += " Reward rules (docs/rewards.md): duplicate credit <b>" + esc(opt_str(*rw, "duplicate_credit", "report.json: rewards")) +
         "</b> (" + esc(opt_str(*rw, "duplicate_match", "report.json: rewards")) + " copies, registration order: " +
         esc(opt_str(*rw, "registration_order", "report.json: rewards")) + "), then quality hold <b>" +
         esc(opt_str(*rw, "quality_hold", "report.json: rewards")) + "</b>";
    if (auto th = opt_num(*rw, "quality_hold_threshold", "report.json: rewards")) h += " above an outlier share of " + approx(*th);
    h += "; positive mass is the result.";
  }
  h += " Click a column to sort.</p><div class=\"scroll\"><table class=\"sortable\"><thead><tr>"
       "<th class=\"n\" data-sort=\"num\">#</th><th data-sort=\"text\">Tranche and flags</th><th data-sort=\"text\">Account</th>"
       "<th class=\"n\" data-sort=\"num\">Examples</th><th class=\"n\" data-sort=\"num\">Share</th>"
       "<th class=\"n\" data-sort=\"num\">Total influence</th><th class=\"n\" data-sort=\"num\">Mean influence</th>";
  if (any_rewards)
    h += "<th class=\"n\" data-sort=\"num\" title=\"mass under the negative-influence policy alone\">Mass before rules</th>"
         "<th class=\"n\" data-sort=\"num\" title=\"examples credited nothing: another holder of the same example is paid\">"
         "Uncredited ex.</th><th class=\"n\" data-sort=\"num\" title=\"quality hold: threshold / outlier share when held\">"
         "Hold factor</th>";
  if (show_mass) h += "<th class=\"n\" data-sort=\"num\">Positive mass</th>";
  h += "<th class=\"n\" data-sort=\"num\">Self-infl. \xC3\x97median</th><th class=\"n\" data-sort=\"num\">Internal dup.</th>";
  if (any_quality)
    h += "<th class=\"n\" data-sort=\"num\" title=\"share of its examples with a near duplicate in the same tranche\">"
         "Near-dup. rate</th><th class=\"n\" data-sort=\"num\" title=\"share of its examples among the training set's top "
         "self-influence examples\">Outlier share</th>";
  h += "</tr></thead><tbody>";
  for (const auto& r : rows) {
    h += "<tr><td class=\"n\" data-v=\"" + std::to_string(r.index) + "\">" + std::to_string(r.index) + "</td>";
    h += "<td class=\"tr\" data-v=\"" + esc(r.id) + "\"><div class=\"tname id\">" + esc(r.id) + "</div>";
    std::string sub = r.name;
    if (!r.license.empty()) sub += (sub.empty() ? "" : " \xC2\xB7 ") + std::string("license: ") + r.license;
    if (!sub.empty()) h += "<div class=\"small\">" + esc(sub) + "</div>";
    // Flags sit under the name: a column of their own would push the table past a laptop's width.
    if (!r.flags.empty()) h += "<div class=\"flagrow\">" + flag_chips(r.flags) + "</div>";
    h += "</td><td class=\"mono acct\" data-v=\"" + esc(r.account) + "\" title=\"" + esc(r.account) + "\">" + esc(short_account(r.account)) + "</td>";
    h += int_cell(r.examples) + pct_cell(r.share) + num_cell(r.total_influence) + num_cell(r.mean_influence);
    if (any_rewards) {
      std::string hold_more;
      if (r.hold_outlier_share) hold_more = "; outlier share " + exact(*r.hold_outlier_share);
      h += num_cell(r.mass_before) + int_cell(r.uncredited_examples);
      if (r.hold_factor)
        h += "<td class=\"n" + std::string(*r.hold_factor < 1 ? " hot" : "") + "\" data-v=\"" + exact(*r.hold_factor) +
             "\" title=\"factor " + exact(*r.hold_factor) + hold_more + "\">" + approx(*r.hold_factor) + "</td>";
      else
        h += num_cell(std::nullopt);
    }
    if (show_mass) h += num_cell(r.positive_mass);
    if (r.self_ratio)
      h += "<td class=\"n" + std::string(*r.self_ratio > 2 ? " hot" : "") + "\" data-v=\"" + exact(*r.self_ratio) +
           "\" title=\"median self-influence " + (r.self_median ? exact(*r.self_median) : std::string("unknown")) +
           "; ratio " + exact(*r.self_ratio) + "\">" + approx(*r.self_ratio) + "\xC3\x97</td>";
    else
      h += num_cell(std::nullopt);
    h += int_cell(r.internal_duplicates);
    if (any_quality)
    {
      // The counts behind the rates go into the tooltips.
      std::string nd_more, out_more;
      if (r.near_duplicate_examples) nd_more += "; " + integer(*r.near_duplicate_examples) + " examples with a near duplicate in this tranche";
      if (r.cross_duplicate_examples) nd_more += "; " + integer(*r.cross_duplicate_examples) + " with one in another tranche";
      if (r.outlier_examples) out_more = "; " + integer(*r.outlier_examples) + " outlier examples";
      h += pct_cell(r.near_duplicate_rate, false, nd_more) +
           pct_cell(r.outlier_share, outlier_limit && r.outlier_share.value_or(0) > *outlier_limit, out_more);
    }
    h += "</tr>";
  }
  h += "</tbody></table></div></section>\n";

  // Data quality: what the flags mean, and the pairs behind the duplicate flags.
  h += "<section id=\"quality\"><h2>Data quality</h2>";
  std::map<std::string, std::string> seen;  // flag kind (before ':') -> one example, sorted by kind
  for (const auto& r : rows)
    for (const auto& f : r.flags) seen.emplace(f.substr(0, f.find(':')), f);
  if (seen.empty()) h += "<p class=\"note\">No tranche carries a data-quality flag.</p>";
  else {
    h += "<table><thead><tr><th>Flag</th><th>Tranches</th><th>Meaning</th></tr></thead><tbody>";
    for (const auto& [kind, example] : seen) {
      size_t n = 0;
      for (const auto& r : rows)
        n += std::any_of(r.flags.begin(), r.flags.end(), [&](const std::string& f) { return f.substr(0, f.find(':')) == kind; }) ? 1 : 0;
      const auto info = flag_info(example, thresholds);
      h += "<tr><td class=\"kind\"><span class=\"chip f-" + std::string(info.cls) + "\">" + esc(kind) +
           (kind.size() < example.size() ? ":\xE2\x80\xA6" : "") + "</span></td><td class=\"n\">" +
           integer(static_cast<int64_t>(n)) + "</td><td>" + esc(info.meaning) + "</td></tr>";
    }
    h += "</tbody></table>";
  }
  // The pair tables behind the duplicate flags, largest overlap first.
  std::map<std::string, std::vector<std::string>> flags_of;
  for (const auto& r : rows) flags_of[r.id] = r.flags;
  auto has_flag = [&](const std::string& id, const std::string& f) {
    const auto it = flags_of.find(id);
    return it != flags_of.end() && std::find(it->second.begin(), it->second.end(), f) != it->second.end();
  };
  auto read_pairs = [&](const json& arr, const std::string& w, const char* count_key) {
    std::vector<PairRow> out;
    for (size_t i = 0; i < arr.size(); ++i) {
      const std::string wi = at(w, i);
      if (!arr[i].is_object()) wrong_type(wi, "an object", arr[i]);
      const json& ids = opt_arr(arr[i], "tranches", wi);
      const json& counts2 = opt_arr(arr[i], count_key, wi);
      const json& fr = opt_arr(arr[i], "fractions", wi);
      auto num_at = [&](const json& a, size_t k, const char* name) -> std::optional<double> {
        if (k >= a.size()) return std::nullopt;
        if (!a[k].is_number()) wrong_type(at(at(wi, name), k), "a number", a[k]);
        return a[k].get<double>();
      };
      PairRow p;
      for (size_t k = 0; k < 2 && k < ids.size(); ++k) {
        if (!ids[k].is_string()) wrong_type(at(at(wi, "tranches"), k), "a string", ids[k]);
        (k == 0 ? p.a : p.b) = ids[k].get<std::string>();
      }
      p.na = num_at(counts2, 0, count_key);
      p.nb = num_at(counts2, 1, count_key);
      p.fa = num_at(fr, 0, "fractions");
      p.fb = num_at(fr, 1, "fractions");
      p.flagged = get(arr[i], "flagged") && arr[i]["flagged"].is_boolean() && arr[i]["flagged"].get<bool>();
      out.push_back(std::move(p));
    }
    return out;
  };
  auto pair_table = [&](std::vector<PairRow> pairs, const char* count_label, const std::function<std::string(const PairRow&)>& status) {
    constexpr size_t kMaxPairs = 20;
    std::stable_sort(pairs.begin(), pairs.end(), [](const PairRow& x, const PairRow& y) {
      return std::max(x.fa.value_or(0), x.fb.value_or(0)) > std::max(y.fa.value_or(0), y.fb.value_or(0));
    });
    std::string o = "<div class=\"scroll\"><table><thead><tr><th>Tranche A</th><th>Tranche B</th><th class=\"n\">" +
                    std::string(count_label) + " (A / B)</th><th class=\"n\">Fraction of A</th><th class=\"n\">Fraction of B</th>"
                    "<th>Flag</th></tr></thead><tbody>";
    for (size_t i = 0; i < std::min(kMaxPairs, pairs.size()); ++i) {
      const auto& p = pairs[i];
      o += "<tr><td class=\"id\">" + esc(p.a) + "</td><td class=\"id\">" + esc(p.b) + "</td><td class=\"n\">" + count_text(p.na) +
           " / " + count_text(p.nb) + "</td>" + pct_cell(p.fa) + pct_cell(p.fb) + "<td>" + status(p) + "</td></tr>";
    }
    o += "</tbody></table></div>";
    if (pairs.size() > kMaxPairs)
      o += "<p class=\"small\">" + integer(static_cast<int64_t>(pairs.size() - kMaxPairs)) +
           " more pairs with smaller fractions are in report.json.</p>";
    return o;
  };

  const json& dups = opt_arr(report, "duplicates", "report.json");
  h += "<h3>Exact duplicates between tranches</h3>";
  if (dups.empty()) h += "<p class=\"note\">No two tranches share identical examples.</p>";
  else {
    h += "<p class=\"note\">Examples with the same inputs and target, bit for bit; a pair is flagged when either fraction "
         "reaches " + dup_text + ".</p>";
    h += pair_table(read_pairs(dups, "report.json: duplicates", "shared_examples"), "Shared examples", [](const PairRow& p) {
      return p.flagged ? std::string("<span class=\"chip f-dup\">duplicates</span>") : std::string("no");
    });
  }
  if (!near.empty()) {
    const std::string w = "report.json: quality.near_duplicates";
    h += "<h3>Near duplicates</h3><p class=\"note\">Example pairs whose gradient sketches";
    if (auto d = opt_int(near, "sketch_dim", w)) h += " (" + integer(*d) + " dimensions)";
    h += " have cosine similarity \xE2\x89\xA5 " + esc(cos_text);
    if (auto p = opt_int(near, "pairs", w)) h += "; " + integer(*p) + " such pairs in the training set";
    if (auto e = opt_int(near, "exact_copy_examples", w)) h += ", and " + integer(*e) + " examples that are exact copies";
    h += ". A tranche pair is flagged when either fraction reaches " + dup_text + " and the pair is not already flagged "
         "as exact duplicates.";
    const std::string sketch = opt_str(near, "sketch", w);
    const auto lists = opt_int(near, "lists", w), probes = opt_int(near, "probes", w);
    if (!sketch.empty() || lists || probes) {
      h += " <span class=\"small\">Sketch: " + esc(sketch.empty() ? std::string("\xE2\x80\x94") : sketch);
      if (lists) h += "; search over " + integer(*lists) + " inverted lists";
      if (probes) h += ", " + integer(*probes) + " probes per example";
      h += ".</span>";
    }
    h += "</p>";
    const json& tp = opt_arr(near, "tranche_pairs", w);
    if (tp.empty()) h += "<p class=\"note\">No near-duplicate pairs span two tranches.</p>";
    else
      h += pair_table(read_pairs(tp, w + ".tranche_pairs", "examples"), "Examples", [&](const PairRow& p) {
        if (has_flag(p.a, "near_duplicates:" + p.b)) return std::string("<span class=\"chip f-dup\">near_duplicates</span>");
        if (has_flag(p.a, "duplicates:" + p.b)) return std::string("<span class=\"small\">exact duplicates</span>");
        return std::string("no");
      });
  }
  if (!outliers.empty()) {
    const std::string w = "report.json: quality.outliers";
    const auto top = opt_num(outliers, "top_fraction", w);
    h += "<h3>Self-influence outliers</h3><p class=\"note\">Outliers are the training examples in the top " +
         (top ? percent(*top) : std::string("fraction")) + " by self-influence";
    if (auto t = opt_num(outliers, "self_influence_threshold", w)) h += " (self-influence \xE2\x89\xA5 " + approx(*t) + ")";
    if (auto n = opt_int(outliers, "examples", w)) h += "; " + integer(*n) + " examples";
    h += ". The tranche table gives each tranche's outlier share";
    if (auto r = opt_num(outliers, "flag_ratio", w); r && top)
      h += "; a tranche is flagged when it exceeds " + percent(*r * *top) + " (" + exact(*r) + "\xC3\x97 the expected " +
           percent(*top) + ")";
    h += ".</p>";
  }
  h += "</section>\n";

  // A sample of queries with their strongest proponents and opponents.
  constexpr size_t kSampleQueries = 10;
  const json& queries = opt_arr(report, "queries", "report.json");
  h += "<section id=\"queries\"><h2>Sample queries</h2><p class=\"note\">";
  if (queries.empty()) h += "This report lists no queries.</p>";
  else {
    h += "The first " + integer(static_cast<int64_t>(std::min(kSampleQueries, queries.size()))) + " of " +
         integer(static_cast<int64_t>(queries.size())) +
         " queries in report order. Proponents are the training examples that most helped a query (largest TracIn "
         "score), opponents the ones that most hurt it; every query is in report.json.</p><div class=\"queries\">";
    auto list = [&](const json& entries, const std::string& w) {
      if (entries.empty()) return std::string("<p class=\"small\">none</p>");
      std::string o = "<table><thead><tr><th class=\"n\">#</th><th>Example</th><th>Tranche</th><th class=\"n\">Score</th></tr></thead><tbody>";
      for (size_t k = 0; k < entries.size(); ++k) {
        const std::string wk = at(w, k);
        if (!entries[k].is_object()) wrong_type(wk, "an object", entries[k]);
        const std::string tranche = opt_str(entries[k], "tranche", wk);
        const auto it = flagged.find(tranche);
        const bool fl = it != flagged.end() && it->second;
        o += "<tr><td class=\"n\">" + std::to_string(k + 1) + "</td><td class=\"mono id\">" + esc(opt_str(entries[k], "id", wk)) +
             "</td><td><span class=\"chip t" + std::string(fl ? " flagged" : "") + "\">" + esc(tranche) +
             (fl ? " \xE2\x9A\x91" : "") + "</span></td>" + num_cell(opt_num(entries[k], "score", wk)) + "</tr>";
      }
      return o + "</tbody></table>";
    };
    for (size_t q = 0; q < std::min(kSampleQueries, queries.size()); ++q) {
      const std::string w = at("report.json: queries", q);
      if (!queries[q].is_object()) wrong_type(w, "an object", queries[q]);
      h += "<div class=\"q\"><h3>" + esc(opt_str(queries[q], "id", w)) + "</h3><div class=\"lists\"><div><h4>Proponents</h4>" +
           list(opt_arr(queries[q], "proponents", w), at(w, "proponents")) + "</div><div><h4>Opponents</h4>" +
           list(opt_arr(queries[q], "opponents", w), at(w, "opponents")) + "</div></div></div>";
    }
    h += "</div>";
  }
  h += "</section>\n";

  // The manifest's facts: enough to recompute the run, or to see why two runs differ.
  h += "<section id=\"manifest\"><h2>Reproducibility</h2><p class=\"note\">From manifest.json, which pins every input by "
       "hash and every setting that can change a number; <code>attrace attribute</code> with the same inputs and settings "
       "reproduces report.json byte for byte.</p><dl class=\"facts\">";
  {
    std::string eng = esc(opt_str(engine, "name", "manifest.json: engine"));
    if (!version.empty()) eng += " " + esc(version);
    if (!revision.empty()) eng += ", revision <span class=\"hash\">" + esc(revision) + "</span>";
    h += dd_row("Engine", eng.empty() ? "\xE2\x80\x94" : eng);
    h += dd_row("Method", esc(method) + " \xE2\x80\x94 " + esc(method_text(method, projection, "manifest.json: projection")));
    std::string proj;
    for (const auto& [k, v] : projection.items())
      if (k != "checkpoints") proj += (proj.empty() ? "" : " \xC2\xB7 ") + esc(k) + " = " + esc(scalar_text(v));
    if (!proj.empty()) h += dd_row("Projection", proj);
    std::string m;
    for (const auto& [k, v] : math.items()) m += (m.empty() ? "" : " \xC2\xB7 ") + esc(k) + " = " + esc(scalar_text(v));
    if (!m.empty()) h += dd_row("Arithmetic", m);
    if (!policy.empty()) h += dd_row("Negative influence", esc(policy));
    const json& tol = opt_obj(manifest, "tolerance", "manifest.json");
    if (auto v = opt_num(tol, "value", "manifest.json: tolerance"))
      h += dd_row("Tolerance", esc(exact(*v)) + " (" + esc(opt_str(tol, "kind", "manifest.json: tolerance")) + ")");
    std::string qs;
    for (const auto& [k, v] : opt_obj(manifest, "quality", "manifest.json").items())
      qs += (qs.empty() ? "" : " \xC2\xB7 ") + esc(k) + " = " + esc(scalar_text(v));
    if (!qs.empty()) h += dd_row("Quality signals", qs);
    const json& params = opt_arr(manifest, "parameters", "manifest.json");
    std::string pd = integer(static_cast<int64_t>(params.size())) + " tensors";
    if (auto g = opt_int(manifest, "gradient_dim", "manifest.json")) pd += ", gradient dimension " + integer(*g);
    if (!params.empty()) {
      std::string names;
      for (const auto& p : params) names += (names.empty() ? "" : "\n") + scalar_text(p);
      pd += "<details><summary>names, in gradient order</summary><pre>" + esc(names) + "</pre></details>";
    }
    h += dd_row("Parameters", pd);
    const json& run = opt_obj(manifest, "run", "manifest.json");
    if (!run.empty())
      h += dd_row("Run file", "<span class=\"mono id\">" + esc(opt_str(run, "file", "manifest.json: run")) +
                                  "</span> <span class=\"small\">sha256</span> <span class=\"hash\">" +
                                  esc(short_hash(opt_str(run, "sha256", "manifest.json: run"))) + "\xE2\x80\xA6</span>");
  }
  h += "</dl>";

  const json& ckpts = opt_arr(opt_obj(manifest, "run", "manifest.json"), "checkpoints", "manifest.json: run");
  h += "<h3>Checkpoints</h3>";
  if (ckpts.empty()) h += "<p class=\"note\">The manifest lists no checkpoints.</p>";
  else {
    h += "<div class=\"scroll\"><table><thead><tr><th class=\"n\">#</th><th>File</th><th class=\"n\">Step</th>"
         "<th class=\"n\">Learning rate</th><th>sha256</th><th>Gradient path</th></tr></thead><tbody>";
    for (size_t c = 0; c < ckpts.size(); ++c) {
      const std::string w = at("manifest.json: run.checkpoints", c);
      const json& ck = ckpts[c];
      if (!ck.is_object()) wrong_type(w, "an object", ck);
      const std::string sha = opt_str(ck, "sha256", w);
      const auto step = opt_int(ck, "step", w);
      const auto lr = opt_num(ck, "lr", w);
      h += "<tr><td class=\"n\">" + std::to_string(c + 1) + "</td><td class=\"mono id\">" + esc(opt_str(ck, "file", w)) +
           "</td><td class=\"n\">" + (step ? integer(*step) : "\xE2\x80\x94") + "</td><td class=\"n\">" +
           (lr ? esc(exact(*lr)) : "\xE2\x80\x94") + "</td><td class=\"hash\" title=\"" + esc(sha) + "\">" +
           esc(short_hash(sha)) + "\xE2\x80\xA6</td><td>" + esc(opt_str(ck, "gradient_path", w)) + "</td></tr>";
    }
    h += "</tbody></table></div>";
  }

  h += "<h3>Datasets</h3><div class=\"scroll\"><table><thead><tr><th>Role</th><th>File</th><th class=\"n\">Examples</th>"
       "<th>sha256</th></tr></thead><tbody>";
  for (const char* role : {"train", "query"}) {
    const std::string w = std::string("manifest.json: ") + role;
    const json& d = opt_obj(manifest, role, "manifest.json");
    const std::string sha = opt_str(d, "sha256", w);
    const auto n = opt_int(d, "examples", w);
    h += "<tr><td>" + std::string(role == std::string("train") ? "training set" : "query set") + "</td><td class=\"mono id\">" +
         esc(opt_str(d, "file", w)) + "</td><td class=\"n\">" + (n ? integer(*n) : "\xE2\x80\x94") +
         "</td><td class=\"hash\">" + esc(sha) + "</td></tr>";
  }
  h += "</tbody></table></div>";

  // Settings that can change a number. Paths are pinned by hash above, output options change no
  // number, and some settings have no effect in this configuration: with canonical scoring
  // neither batch size nor device changes a bit, GEMM math applies to BLAS scoring only, and the
  // projection's parameters only to a projection. Unknown settings are always listed.
  const std::string scoring = attribution_settings.contains("scoring") ? scalar_text(attribution_settings["scoring"]) : "";
  const json& projection_settings = opt_obj(settings, "projection", "manifest.json: settings");
  const std::string projection_kind =
      projection_settings.contains("kind") ? scalar_text(projection_settings["kind"]) : "";
  auto in_effect = [&](const std::string& section, const std::string& key) {
    if (section == "run" || section == "data" || section == "output") return false;
    if (section == "gradients" && (key == "batch_size" || key == "device")) return scoring == "blas";
    if (section == "attribution" && key == "gemm_math") return scoring == "blas";
    if (section == "projection" && key != "kind") return projection_kind != "none";
    return true;
  };
  h += "<h3>Settings that change results</h3><p class=\"note\">Settings without effect in this configuration (and "
       "paths, pinned by hash above) are left out here; all are under \xE2\x80\x9C" "All resolved settings\xE2\x80\x9D."
       "</p><div class=\"scroll\"><table><thead><tr><th>Setting</th><th>Value</th></tr></thead><tbody>";
  for (const auto& [section, values] : settings.items()) {
    if (!values.is_object()) continue;
    for (const auto& [key, value] : values.items()) {
      if (!in_effect(section, key)) continue;
      h += "<tr><td class=\"mono\">" + esc(section + "." + key) + "</td><td class=\"mono id\">" + esc(scalar_text(value)) + "</td></tr>";
    }
  }
  h += "</tbody></table></div><details><summary>All resolved settings</summary><pre>" + esc(settings.dump(2, ' ', false, json::error_handler_t::replace)) + "</pre></details>";

  const json& mtranches = opt_arr(manifest, "tranches", "manifest.json");
  if (!mtranches.empty()) {
    h += "<h3>Accounts</h3><div class=\"scroll\"><table><thead><tr><th>Tranche</th><th>Account</th><th class=\"n\">Examples</th>"
         "</tr></thead><tbody>";
    for (size_t t = 0; t < mtranches.size(); ++t) {
      const std::string w = at("manifest.json: tranches", t);
      const auto n = opt_int(mtranches[t], "examples", w);
      h += "<tr><td class=\"id\">" + esc(opt_str(mtranches[t], "id", w)) + "</td><td class=\"hash\">" +
           esc(opt_str(mtranches[t], "account", w)) + "</td><td class=\"n\">" + (n ? integer(*n) : "\xE2\x80\x94") + "</td></tr>";
    }
    h += "</tbody></table></div>";
  }

  const json& outputs = opt_obj(manifest, "outputs", "manifest.json");
  h += "<h3>Output hashes</h3>";
  if (outputs.empty()) h += "<p class=\"note\">The manifest lists no output hashes.</p>";
  else {
    h += "<div class=\"scroll\"><table><thead><tr><th>File</th><th>sha256</th></tr></thead><tbody>";
    for (const auto& [file, sha] : outputs.items())
      h += "<tr><td class=\"mono\">" + esc(file) + "</td><td class=\"hash\">" + esc(scalar_text(sha)) + "</td></tr>";
    h += "</tbody></table></div>";
  }
  h += "</section>\n</main>\n<footer class=\"wrap\">Rendered by attrace";
  if (!version.empty()) h += " " + esc(version);
  h += " from report.json and manifest.json, which are authoritative. The page loads nothing from the network.</footer>\n";
  h += "<script>" + std::string(kScript) + "</script>\n</body></html>\n";
  return h;
}

}  // namespace attrace::engine
