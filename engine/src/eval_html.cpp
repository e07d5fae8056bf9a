// eval.html: one self-contained page for an eval.json document: a chart per metric (methods
// side by side, LDS with its 95% bootstrap interval) and the method x metric x time table. No
// script; the Content-Security-Policy admits inline styles only. Strings from the document go
// through esc() (a recipe's model path is user text).
#include <attrace/engine/report_html.hpp>
#include <attrace/engine/eval.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace attrace::engine::eval {
namespace {

using nlohmann::json;

std::string esc(const std::string& s) { return html_escape(s); }

std::string num(double v, int digits = 3) {
  if (!std::isfinite(v)) return "n/a";
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

struct Bar {
  std::string label;
  double value = 0, lo = NAN, hi = NAN;
};

// Horizontal bars on a shared axis [lo, hi]; whiskers where an interval is given.
std::string chart(const std::string& title, const std::vector<Bar>& bars, double axis_lo, double axis_hi) {
  const int left = 130, width = 460, row = 26, top = 28;
  const int h = top + row * static_cast<int>(bars.size()) + 26;
  auto x = [&](double v) {
    const double t = (std::clamp(v, axis_lo, axis_hi) - axis_lo) / (axis_hi - axis_lo);
    return left + static_cast<int>(std::lround(t * width));
  };
  std::string s = "<figure><figcaption>" + esc(title) + "</figcaption><svg role=\"img\" width=\"" +
                  std::to_string(left + width + 70) + "\" height=\"" + std::to_string(h) + "\" viewBox=\"0 0 " +
                  std::to_string(left + width + 70) + " " + std::to_string(h) + "\">";
  const int x0 = x(std::max(axis_lo, 0.0));
  for (size_t i = 0; i < bars.size(); ++i) {
    const auto& b = bars[i];
    const int y = top + row * static_cast<int>(i);
    const int xv = x(b.value);
    s += "<text x=\"" + std::to_string(left - 8) + "\" y=\"" + std::to_string(y + 15) + "\" text-anchor=\"end\">" +
         esc(b.label) + "</text>";
    s += "<rect class=\"bar\" x=\"" + std::to_string(std::min(x0, xv)) + "\" y=\"" + std::to_string(y + 4) + "\" width=\"" +
         std::to_string(std::abs(xv - x0)) + "\" height=\"16\"/>";
    if (std::isfinite(b.lo) && std::isfinite(b.hi)) {
      const int a = x(b.lo), c = x(b.hi), m = y + 12;
      s += "<path class=\"ci\" d=\"M" + std::to_string(a) + " " + std::to_string(m) + "H" + std::to_string(c) + "M" +
           std::to_string(a) + " " + std::to_string(m - 6) + "V" + std::to_string(m + 6) + "M" + std::to_string(c) + " " +
           std::to_string(m - 6) + "V" + std::to_string(m + 6) + "\"/>";
    }
    s += "<text x=\"" + std::to_string(std::max(xv, std::isfinite(b.hi) ? x(b.hi) : xv) + 6) + "\" y=\"" +
         std::to_string(y + 15) + "\">" + num(b.value) + "</text>";
  }
  const int ya = top + row * static_cast<int>(bars.size()) + 4;
  s += "<path class=\"axis\" d=\"M" + std::to_string(left) + " " + std::to_string(ya) + "H" + std::to_string(left + width) + "\"/>";
  for (int k = 0; k <= 4; ++k) {
    const double v = axis_lo + (axis_hi - axis_lo) * k / 4.0;
    s += "<text class=\"tick\" x=\"" + std::to_string(x(v)) + "\" y=\"" + std::to_string(ya + 16) +
         "\" text-anchor=\"middle\">" + num(v, 2) + "</text>";
  }
  return s + "</svg></figure>\n";
}

double get(const json& j, const char* k) { return j.contains(k) && j.at(k).is_number() ? j.at(k).get<double>() : NAN; }

}  // namespace

std::string eval_html(const json& doc) {
  std::string body;
  std::string table = "<table><thead><tr><th>method</th>";
  const bool has_lds = doc.contains("lds"), has_noisy = doc.contains("noisy");
  if (has_lds) table += "<th>LDS (mean Spearman)</th><th>95% CI</th><th>LDS time (s)</th>";
  if (has_noisy) table += "<th>noisy AUC</th><th>found in top 5/10/20%</th><th>noisy time (s)</th>";
  table += "</tr></thead><tbody>";
  std::vector<std::string> names;
  auto add_names = [&](const json& block) {
    for (const auto& m : block.at("methods"))
      if (std::find(names.begin(), names.end(), m.at("method").get<std::string>()) == names.end())
        names.push_back(m.at("method").get<std::string>());
  };
  if (has_lds) add_names(doc.at("lds"));
  if (has_noisy) add_names(doc.at("noisy"));
  auto find = [](const json& block, const std::string& name) -> const json* {
    for (const auto& m : block.at("methods"))
      if (m.at("method") == name) return &m;
    return nullptr;
  };
  for (const auto& name : names) {
    table += "<tr><td>" + esc(name) + "</td>";
    if (has_lds) {
      const json* m = find(doc.at("lds"), name);
      if (m) {
        const auto& l = m->at("lds");
        table += "<td>" + num(get(l, "mean")) + "</td><td>[" + num(l.at("ci95")[0].get<double>()) + ", " +
                 num(l.at("ci95")[1].get<double>()) + "]</td><td>" + num(get(*m, "seconds"), 2) + "</td>";
      } else {
        table += "<td></td><td></td><td></td>";
      }
    }
    if (has_noisy) {
      const json* m = find(doc.at("noisy"), name);
      if (m && m->value("applicable", false)) {
        table += "<td>" + num(get(*m, "auc")) + "</td><td>" + num(get(*m, "found_top5")) + " / " + num(get(*m, "found_top10")) +
                 " / " + num(get(*m, "found_top20")) + "</td><td>" + num(get(*m, "seconds"), 2) + "</td>";
      } else {
        table += "<td>n/a</td><td>n/a</td><td>" + (m ? num(get(*m, "seconds"), 2) : std::string()) + "</td>";
      }
    }
    table += "</tr>";
  }
  table += "</tbody></table>\n";

  if (has_lds) {
    const auto& l = doc.at("lds");
    std::vector<Bar> bars;
    double lo = 0, hi = 0.1;
    for (const auto& m : l.at("methods")) {
      const auto& v = m.at("lds");
      bars.push_back({m.at("method").get<std::string>(), get(v, "mean"), v.at("ci95")[0].get<double>(), v.at("ci95")[1].get<double>()});
      lo = std::min(lo, bars.back().lo);
      hi = std::max(hi, bars.back().hi);
    }
    body += "<h2>Linear datamodeling score</h2><p>" + std::to_string(l.at("subsets").get<int64_t>()) +
            " subsets of alpha = " + num(get(l, "alpha"), 2) + " of " + std::to_string(l.at("n_train").get<int64_t>()) +
            " training examples; output: " + esc(l.at("output").get<std::string>()) + "; ground truth " +
            esc(l.at("ground_truth").get<std::string>()) + "; mean Spearman over " +
            std::to_string(l.at("n_query").get<int64_t>()) + " queries with a 95% bootstrap interval (" +
            std::to_string(l.at("bootstrap").get<int64_t>()) + " resamples).</p>";
    body += chart("LDS (higher is better)", bars, std::floor(lo * 10) / 10, std::ceil(hi * 10) / 10);
    std::vector<Bar> t;
    double tmax = 0;
    for (const auto& m : l.at("methods")) {
      t.push_back({m.at("method").get<std::string>(), get(m, "seconds")});
      tmax = std::max(tmax, t.back().value);
    }
    body += chart("Scoring time (s) on the LDS task, featurization excluded", t, 0, tmax > 0 ? tmax * 1.1 : 1);
  }
  if (has_noisy) {
    const auto& n = doc.at("noisy");
    body += "<h2>Noisy-label detection</h2><p>" + std::to_string(n.at("flipped").get<int64_t>()) + " of " +
            std::to_string(n.at("n_train").get<int64_t>()) + " training labels flipped (fraction " +
            num(get(n, "fraction"), 2) + "); training examples ranked by each method's self-influence.</p>";
    std::vector<Bar> a, f10;
    for (const auto& m : n.at("methods")) {
      if (!m.value("applicable", false)) continue;
      a.push_back({m.at("method").get<std::string>(), get(m, "auc")});
      f10.push_back({m.at("method").get<std::string>(), get(m, "found_top10")});
    }
    body += chart("AUC of self-influence for flipped labels", a, 0, 1);
    body += chart("Share of flipped labels found in the top 10%", f10, 0, 1);
  }
  std::string recipe = doc.contains("recipe") ? doc.at("recipe").dump(1) : "{}";
  return "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
         "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
         "<title>attrace eval</title><style>"
         "body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:980px;color:#1d2430}"
         "table{border-collapse:collapse;margin:12px 0}td,th{border-bottom:1px solid #d8dde6;padding:4px 10px;text-align:left}"
         "figure{margin:16px 0}figcaption{font-weight:600;margin-bottom:4px}svg text{font-size:12px;fill:#1d2430}"
         ".bar{fill:#4a78c2}.ci{stroke:#10223f;stroke-width:1.5;fill:none}.axis{stroke:#8a94a6}.tick{fill:#5b6472}"
         "pre{background:#f4f6f9;padding:8px;overflow:auto}"
         "</style></head><body><h1>attrace eval</h1><p>Data: " +
         esc(doc.value("data", std::string())) + ". Engine " + esc(doc.value("engine_version", std::string())) +
         ".</p><h2>Methods</h2>" + table + body + "<h2>Training recipe</h2><pre>" + esc(recipe) + "</pre></body></html>\n";
}

}  // namespace attrace::engine::eval
