// report.html as people see it: a real run's report.json and manifest.json rendered and loaded in a
// real headless browser (no console messages, a non-blank screenshot), hostile strings shown as
// text, the same documents giving the same bytes. The browser checks are themselves checked on
// pages built to fail them. Chromium is required (scripts/setup.sh installs it): a missing browser
// fails these tests rather than skipping them.
#include "test_util.hpp"

#include <attrace/engine/report_html.hpp>
#include <attrace/error.hpp>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <zlib.h>

#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using attrace::engine::report_html;
using attrace::test::fixture;
using attrace::test::read_text;
using attrace::test::TempDir;
using attrace::test::write_text;
using nlohmann::json;

namespace {

struct Command {
  int code = -1;
  std::string out;  // stdout and stderr together
};

Command shell(const std::string& cmd) {
  Command r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string quote(const std::string& s) {
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

/// The browser under test; ATTRACE_CHROMIUM overrides Debian's.
std::string chromium() {
  if (const char* c = std::getenv("ATTRACE_CHROMIUM")) return c;
  return "/usr/bin/chromium";
}

/// What one headless load of a page gives back.
struct BrowserLoad {
  int code = -1;
  std::string log;   // chromium's stderr, console messages included
  std::string dom;   // the DOM after scripts ran, serialized
  std::string png;   // screenshot path
};

/// Loads a page once: screenshot of a 1280x2000 window, DOM dump, and every console message
/// (chromium logs each one to stderr as "...:CONSOLE..." with --enable-logging=stderr).
BrowserLoad load_page(const std::string& html_path, const TempDir& dir, const std::string& name) {
  BrowserLoad b;
  b.png = dir / (name + ".png");
  const std::string err = dir / (name + ".stderr"), dom = dir / (name + ".dom");
  // A fresh profile per load, so parallel tests never share one.
  const std::string cmd = "timeout 120 " + quote(chromium()) + " --headless --no-sandbox --disable-gpu --no-first-run" +
                          " --user-data-dir=" + quote(dir / (name + ".profile")) +
                          " --enable-logging=stderr --v=0 --window-size=1280,2000 --screenshot=" + quote(b.png) +
                          " --dump-dom " + quote("file://" + fs::absolute(html_path).string()) + " >" + quote(dom) +
                          " 2>" + quote(err);
  b.code = shell("{ " + cmd + "; }").code;  // braces: shell()'s own 2>&1 must not override ours
  b.log = read_text(err);
  b.dom = read_text(dom);
  return b;
}

std::vector<std::string> console_messages(const std::string& log) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < log.size()) {
    size_t end = log.find('\n', start);
    if (end == std::string::npos) end = log.size();
    const std::string line = log.substr(start, end - start);
    if (line.find(":CONSOLE") != std::string::npos) lines.push_back(line);
    start = end + 1;
  }
  return lines;
}

/// An RGBA image decoded from a PNG file.
struct Image {
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> rgba;
};

uint32_t be32(const uint8_t* p) { return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3]; }

/// Decodes the PNGs a browser writes: 8-bit RGB or RGBA, not interlaced. Anything else fails the test.
Image decode_png(const std::string& path) {
  const std::string data = read_text(path);
  const auto* p = reinterpret_cast<const uint8_t*>(data.data());
  Image img;
  EXPECT_GE(data.size(), 8u) << path;
  if (data.size() < 8 || std::memcmp(p, "\x89PNG\r\n\x1a\n", 8) != 0) {
    ADD_FAILURE() << path << " is not a PNG";
    return img;
  }
  std::string idat;
  int channels = 0;
  for (size_t off = 8; off + 12 <= data.size();) {
    const uint32_t len = be32(p + off);
    const std::string type(data, off + 4, 4);
    if (off + 12 + len > data.size()) break;
    const uint8_t* body = p + off + 8;
    if (type == "IHDR") {
      img.width = be32(body);
      img.height = be32(body + 4);
      const int depth = body[8], colour = body[9], interlace = body[12];
      if (depth != 8 || (colour != 2 && colour != 6) || interlace != 0) {
        ADD_FAILURE() << path << ": unsupported PNG (depth " << depth << ", colour type " << colour << ", interlace " << interlace << ")";
        return {};
      }
      channels = colour == 6 ? 4 : 3;
    } else if (type == "IDAT") {
      idat.append(reinterpret_cast<const char*>(body), len);
    } else if (type == "IEND") {
      break;
    }
    off += 12 + len;
  }
  if (channels == 0 || img.width == 0 || img.height == 0) {
    ADD_FAILURE() << path << ": no image header";
    return {};
  }
  const size_t stride = size_t{img.width} * channels;
  std::vector<uint8_t> raw((stride + 1) * img.height);
  uLongf raw_len = raw.size();
  if (::uncompress(raw.data(), &raw_len, reinterpret_cast<const Bytef*>(idat.data()), idat.size()) != Z_OK || raw_len != raw.size()) {
    ADD_FAILURE() << path << ": image data does not inflate to " << raw.size() << " bytes";
    return {};
  }
  // Undo the per-row filters (PNG spec, section 9).
  std::vector<uint8_t> px(stride * img.height);
  for (uint32_t y = 0; y < img.height; ++y) {
    const uint8_t filter = raw[y * (stride + 1)];
    const uint8_t* in = &raw[y * (stride + 1) + 1];
    uint8_t* out = &px[y * stride];
    const uint8_t* up = y ? &px[(y - 1) * stride] : nullptr;
    for (size_t x = 0; x < stride; ++x) {
      const int a = x >= static_cast<size_t>(channels) ? out[x - channels] : 0;
      const int b = up ? up[x] : 0;
      const int c = (up && x >= static_cast<size_t>(channels)) ? up[x - channels] : 0;
      int pred = 0;
      switch (filter) {
        case 0: pred = 0; break;
        case 1: pred = a; break;
        case 2: pred = b; break;
        case 3: pred = (a + b) / 2; break;
        case 4: {
          const int pa = std::abs(b - c), pb = std::abs(a - c), pc = std::abs(a + b - 2 * c);
          pred = (pa <= pb && pa <= pc) ? a : (pb <= pc ? b : c);
          break;
        }
        default: ADD_FAILURE() << path << ": bad filter " << int{filter} << " in row " << y; return {};
      }
      out[x] = static_cast<uint8_t>(in[x] + pred);
    }
  }
  img.rgba.resize(size_t{img.width} * img.height * 4);
  for (size_t i = 0; i < size_t{img.width} * img.height; ++i) {
    for (int k = 0; k < 3; ++k) img.rgba[i * 4 + k] = px[i * channels + k];
    img.rgba[i * 4 + 3] = channels == 4 ? px[i * channels + 3] : 255;
  }
  return img;
}

/// How much a screenshot shows: its distinct colours and the share of pixels that differ from the
/// most common one (the background).
struct Ink {
  size_t colours = 0;
  double foreground = 0;
};
Ink measure(const Image& img) {
  std::vector<uint32_t> colours(img.rgba.size() / 4);
  for (size_t i = 0; i < colours.size(); ++i) std::memcpy(&colours[i], &img.rgba[i * 4], 4);
  std::vector<uint32_t> sorted = colours;
  std::sort(sorted.begin(), sorted.end());
  Ink ink;
  size_t best = 0;
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i;
    while (j < sorted.size() && sorted[j] == sorted[i]) ++j;
    ++ink.colours;
    best = std::max(best, j - i);
    i = j;
  }
  ink.foreground = sorted.empty() ? 0 : 1.0 - static_cast<double>(best) / static_cast<double>(sorted.size());
  return ink;
}
/// A page with text, tables and a chart has hundreds of anti-aliased colours and covers a good
/// part of the window; a blank page has one colour.
bool shows_content(const Ink& ink) { return ink.colours >= 32 && ink.foreground >= 0.02; }

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

/// A real attribution run on the fixtures: its report.json and manifest.json.
struct RunOutput {
  json report, manifest;
};
RunOutput attribute_fixture(const TempDir& d) {
  write_text(d / "c.toml", "[run]\ncheckpoints = \"" + fixture("mlp_run.toml") + "\"\n[data]\ntrain = \"" +
                               fixture("vec_train.h5") + "\"\nquery = \"" + fixture("vec_query.h5") +
                               "\"\n[gradients]\nbatch_size = 8\n[attribution]\ntop_k = 4\n");
  const std::string bin = attrace::test::attrace_bin();
  EXPECT_FALSE(bin.empty()) << "attrace binary unknown (set ATTRACE_BIN)";
  const auto r = shell(quote(bin) + " attribute -q -c " + quote(d / "c.toml") + " -o " + quote(d / "out"));
  EXPECT_EQ(r.code, 0) << r.out;
  if (r.code != 0) return {};
  return {json::parse(read_text(d / "out/report.json")), json::parse(read_text(d / "out/manifest.json"))};
}

/// The fields the quality signals add (docs/formats.md#reportjson), filled in for a report that
/// lacks them, so the page's handling of them is tested before every run carries them.
void add_quality(json& report) {
  auto& ts = report["tranches"];
  ASSERT_GE(ts.size(), 2u);
  for (size_t i = 0; i < ts.size(); ++i)
    ts[i]["quality"] = {{"near_duplicate_examples", static_cast<int>(i)},
                        {"near_duplicate_rate", 0.125 * static_cast<double>(i)},
                        {"outlier_examples", 1},
                        {"outlier_share", 0.03125}};
  const std::string a = ts[0]["id"], b = ts[1]["id"];
  ts[0]["flags"].push_back("near_duplicates:" + b);
  ts[1]["flags"].push_back("near_duplicates:" + a);
  ts[1]["flags"].push_back("self_influence_outliers");
  report["quality"] = {{"near_duplicates",
                        {{"cosine_threshold", 0.97},
                         {"sketch_dim", 256},
                         {"pairs", 7},
                         {"tranche_pairs", {{{"tranches", {a, b}}, {"examples", {3, 4}}, {"fractions", {0.375, 0.5}}}}}}},
                       {"outliers", {{"top_fraction", 0.01}, {"self_influence_threshold", 42.5}}}};
}

/// Expects a browser load to show a working page: exit 0, no console message at all (errors,
/// warnings, CSP refusals, uncaught exceptions), the page's script run to its end, a non-blank
/// screenshot.
void expect_clean_load(const BrowserLoad& b) {
  EXPECT_EQ(b.code, 0) << b.log;
  const auto messages = console_messages(b.log);
  EXPECT_TRUE(messages.empty()) << "console messages:\n" << [&] {
    std::string s;
    for (const auto& m : messages) s += m + "\n";
    return s;
  }();
  EXPECT_NE(b.dom.find("data-js=\"ready\""), std::string::npos) << "the page's script did not run to its end";
  ASSERT_TRUE(fs::exists(b.png)) << b.log;
  const Ink ink = measure(decode_png(b.png));
  EXPECT_TRUE(shows_content(ink)) << "screenshot looks blank: " << ink.colours << " colours, "
                                  << ink.foreground * 100 << "% foreground";
}

/// Copies a page and its screenshot where ATTRACE_KEEP_HTML points, for a person to look at.
void keep(const std::string& html, const BrowserLoad& b, const std::string& name) {
  const char* dir = std::getenv("ATTRACE_KEEP_HTML");
  if (!dir) return;
  fs::create_directories(dir);
  fs::copy_file(html, fs::path(dir) / (name + ".html"), fs::copy_options::overwrite_existing);
  if (fs::exists(b.png)) fs::copy_file(b.png, fs::path(dir) / (name + ".png"), fs::copy_options::overwrite_existing);
}

#define REQUIRE_CHROMIUM()                                                                                   \
  ASSERT_TRUE(fs::exists(chromium())) << chromium() << " not found: scripts/setup.sh installs Debian's chromium " \
                                                       "(or set ATTRACE_CHROMIUM)"

}  // namespace

// The checks below must be able to fail: a page with a script error must show up in the console
// check, and a blank page in the screenshot check.
TEST(HtmlBrowserChecks, ConsoleCheckCatchesAScriptError) {
  REQUIRE_CHROMIUM();
  TempDir d;
  write_text(d / "bad.html", "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>bad</title></head><body>"
                             "<h1>Some visible text</h1><script>no_such_function();</script></body></html>");
  const auto b = load_page(d / "bad.html", d, "bad");
  EXPECT_EQ(b.code, 0) << b.log;
  const auto messages = console_messages(b.log);
  ASSERT_EQ(messages.size(), 1u) << b.log;
  EXPECT_NE(messages[0].find("Uncaught ReferenceError: no_such_function is not defined"), std::string::npos) << messages[0];
  EXPECT_EQ(b.dom.find("data-js=\"ready\""), std::string::npos);
}

TEST(HtmlBrowserChecks, BlankCheckCatchesABlankPage) {
  REQUIRE_CHROMIUM();
  TempDir d;
  write_text(d / "blank.html", "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>blank</title></head><body></body></html>");
  const auto b = load_page(d / "blank.html", d, "blank");
  EXPECT_EQ(b.code, 0) << b.log;
  EXPECT_TRUE(console_messages(b.log).empty()) << b.log;
  const Ink ink = measure(decode_png(b.png));
  EXPECT_EQ(ink.colours, 1u);
  EXPECT_EQ(ink.foreground, 0.0);
  EXPECT_FALSE(shows_content(ink));
}

// On the real page too: a script that is not the page's own (here, the page's script with one
// word changed) is refused by the page's policy, and the refusal reaches the console check.
TEST(HtmlBrowserChecks, ConsoleCheckCatchesAScriptThePolicyRefuses) {
  REQUIRE_CHROMIUM();
  TempDir d;
  const json report = {{"format", "attrace.report/1"}, {"tranches", {{{"id", "a"}, {"share", 1.0}}}}};
  std::string html = report_html(report, {{"format", "attrace.manifest/1"}});
  const std::string mark = "setAttribute('data-js','ready')";
  ASSERT_EQ(count(html, mark), 1u);
  html.replace(html.find(mark), mark.size(), "setAttribute('data-js','other')");
  write_text(d / "tampered.html", html);
  const auto b = load_page(d / "tampered.html", d, "tampered");
  EXPECT_EQ(b.code, 0) << b.log;
  const auto messages = console_messages(b.log);
  ASSERT_EQ(messages.size(), 1u) << b.log;
  EXPECT_NE(messages[0].find("Content Security Policy"), std::string::npos) << messages[0];
  EXPECT_EQ(b.dom.find("data-js="), std::string::npos);
  EXPECT_TRUE(shows_content(measure(decode_png(b.png))));  // the page is complete without its script
}

TEST(HtmlPage, RealRunRendersInABrowserWithoutErrors) {
  ATTRACE_REQUIRE_FIXTURES();
  REQUIRE_CHROMIUM();
  TempDir d;
  const auto run = attribute_fixture(d);
  ASSERT_TRUE(run.report.is_object());
  const std::string html = report_html(run.report, run.manifest);
  write_text(d / "report.html", html);
  const auto b = load_page(d / "report.html", d, "report");
  keep(d / "report.html", b, "report");
  expect_clean_load(b);

  // Nothing is fetched: no URL in the page (the inputs hold none either), and a policy that
  // would refuse one.
  ASSERT_EQ(run.report.dump().find("://"), std::string::npos);
  ASSERT_EQ(run.manifest.dump().find("://"), std::string::npos);
  EXPECT_EQ(html.find("://"), std::string::npos);
  EXPECT_NE(html.find("Content-Security-Policy\" content=\"default-src 'none';"), std::string::npos);
  EXPECT_EQ(count(html, "<script"), 1u);
  EXPECT_TRUE(valid_utf8(html));

  // The documents' facts are on the page, as the browser sees it.
  for (const auto& t : run.report["tranches"]) {
    EXPECT_NE(b.dom.find(t["id"].get<std::string>()), std::string::npos) << t["id"];
    EXPECT_NE(b.dom.find(t["account"].get<std::string>()), std::string::npos) << t["account"];
  }
  EXPECT_NE(b.dom.find(run.report["queries"][0]["id"].get<std::string>()), std::string::npos);
  EXPECT_NE(b.dom.find(run.report["queries"][0]["proponents"][0]["id"].get<std::string>()), std::string::npos);
  for (const auto& c : run.manifest["run"]["checkpoints"])
    EXPECT_NE(b.dom.find(c["sha256"].get<std::string>().substr(0, 16)), std::string::npos);
  for (const auto& [file, sha] : run.manifest["outputs"].items()) EXPECT_NE(b.dom.find(sha.get<std::string>()), std::string::npos) << file;
  EXPECT_NE(b.dom.find(run.manifest["train"]["sha256"].get<std::string>()), std::string::npos);
  EXPECT_NE(b.dom.find(run.manifest["engine"]["git_revision"].get<std::string>()), std::string::npos);
  // One chart row per tranche (a bar for each positive share), and the first 10 queries.
  size_t positive = 0;
  for (const auto& t : run.report["tranches"]) positive += t["share"].get<double>() > 0 ? 1 : 0;
  EXPECT_EQ(count(html, "<g class=\"row\">"), run.report["tranches"].size());
  EXPECT_EQ(count(html, "<rect class=\"bar"), positive);
  EXPECT_EQ(count(html, "<div class=\"q\">"), std::min<size_t>(10, run.report["queries"].size()));
  // The run's quality signals are on the page exactly when the report carries them.
  const bool has_quality = run.report.contains("quality");
  EXPECT_EQ(b.dom.find("<h3>Near duplicates</h3>") != std::string::npos, has_quality);
  EXPECT_EQ(b.dom.find("<h3>Self-influence outliers</h3>") != std::string::npos, has_quality);
  EXPECT_EQ(b.dom.find("Near-dup. rate") != std::string::npos, has_quality);
}

TEST(HtmlPage, HostileStringsAreShownAsText) {
  ATTRACE_REQUIRE_FIXTURES();
  REQUIRE_CHROMIUM();
  TempDir d;
  auto run = attribute_fixture(d);
  ASSERT_TRUE(run.report.is_object());
  add_quality(run.report);
  // Every string in both documents (but the format tags) gets a hostile prefix, one per string in
  // turn, so ids, names, licenses, accounts, paths, settings and hashes all carry one.
  const std::vector<std::string> hostile = {
      "<script>alert(1)</script>",
      "\"><img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">",
      "'></style></svg><b id=pwned>bold</b>",
      "&amp; &lt;not-an-entity",
      std::string("bad\xff\xfe utf8 \x01 control"),
      "Z\xC3\xBCrich \xCE\xA9 \xE6\x95\xB0\xE6\x8D\xAE",
  };
  size_t turn = 0;
  std::function<void(json&)> poison = [&](json& j) {
    if (j.is_string()) j = hostile[turn++ % hostile.size()] + j.get<std::string>();
    else if (j.is_array()) for (auto& e : j) poison(e);
    else if (j.is_object())
      for (auto& [k, v] : j.items())
        if (k != "format" && k != "step") poison(v);  // steps must stay integers
  };
  poison(run.report);
  poison(run.manifest);
  run.manifest["outputs"][hostile[0]] = hostile[1];  // keys reach the page too
  run.manifest["settings"]["gradients"][hostile[2]] = hostile[0];
  ASSERT_GT(turn, 100u);

  const std::string html = report_html(run.report, run.manifest);
  // The only elements are the page's own: one script, one style, no image, no injected bold.
  EXPECT_EQ(count(html, "<script"), 1u);
  EXPECT_EQ(count(html, "</style>"), 1u);
  EXPECT_EQ(count(html, "<img"), 0u);
  EXPECT_EQ(count(html, "<b id"), 0u);
  EXPECT_NE(html.find("&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(html.find("&amp;amp; &amp;lt;not-an-entity"), std::string::npos);  // escaped once more, never decoded
  EXPECT_NE(html.find("Z\xC3\xBCrich \xCE\xA9 \xE6\x95\xB0\xE6\x8D\xAE"), std::string::npos);  // real text passes unchanged
  EXPECT_NE(html.find("bad\xEF\xBF\xBD\xEF\xBF\xBD utf8 \xEF\xBF\xBD control"), std::string::npos);
  EXPECT_TRUE(valid_utf8(html));

  write_text(d / "hostile.html", html);
  const auto b = load_page(d / "hostile.html", d, "hostile");
  keep(d / "hostile.html", b, "hostile");
  // An injected script would be refused by the page's policy, which logs to the console: none may appear.
  expect_clean_load(b);
  EXPECT_EQ(b.dom.find("data-pwned=\"1\""), std::string::npos);
  EXPECT_EQ(b.dom.find("<img"), std::string::npos);
  EXPECT_EQ(b.dom.find("id=\"pwned\""), std::string::npos);
  EXPECT_NE(b.dom.find("&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos) << "hostile id not shown as text";
  EXPECT_NE(b.dom.find("Near duplicates"), std::string::npos);
}

TEST(HtmlPage, SameDocumentsGiveTheSameBytes) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  auto run = attribute_fixture(d);
  ASSERT_TRUE(run.report.is_object());
  const std::string first = report_html(run.report, run.manifest);
  EXPECT_EQ(report_html(run.report, run.manifest), first);
  // Through the files' bytes and back, as a later reader of the output directory would.
  EXPECT_EQ(report_html(json::parse(run.report.dump()), json::parse(run.manifest.dump())), first);
  // A second run on the same inputs writes the same page.
  TempDir d2;
  const auto again = attribute_fixture(d2);
  EXPECT_EQ(report_html(again.report, again.manifest), first);
  // And the comparison can tell pages apart: one changed share changes the page.
  auto changed = run.report;
  changed["tranches"][0]["share"] = changed["tranches"][0]["share"].get<double>() + 1e-9;
  EXPECT_NE(report_html(changed, run.manifest), first);
}

TEST(HtmlPage, QualitySignalsAppearWhenPresentAndAreLeftOutWhenAbsent) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  auto run = attribute_fixture(d);
  ASSERT_TRUE(run.report.is_object());
  run.report.erase("quality");
  for (auto& t : run.report["tranches"]) t.erase("quality");
  const std::string without = report_html(run.report, run.manifest);
  EXPECT_EQ(without.find("Near-dup. rate"), std::string::npos);
  EXPECT_EQ(without.find("<h3>Near duplicates</h3>"), std::string::npos);
  EXPECT_EQ(without.find("<h3>Self-influence outliers</h3>"), std::string::npos);

  add_quality(run.report);
  const std::string with = report_html(run.report, run.manifest);
  EXPECT_NE(with.find("Near-dup. rate"), std::string::npos);
  EXPECT_NE(with.find("<h3>Near duplicates</h3>"), std::string::npos);
  EXPECT_NE(with.find("256 dimensions"), std::string::npos);
  EXPECT_NE(with.find("cosine similarity \xE2\x89\xA5 0.97"), std::string::npos);
  EXPECT_NE(with.find("7 such pairs in the training set"), std::string::npos);
  EXPECT_NE(with.find(">37.50%<"), std::string::npos);   // fraction of A
  EXPECT_NE(with.find(">12.50%<"), std::string::npos);   // tranche 1's near-duplicate rate
  EXPECT_NE(with.find("<h3>Self-influence outliers</h3>"), std::string::npos);
  EXPECT_NE(with.find("top 1.00% by self-influence (self-influence \xE2\x89\xA5 42.50)"), std::string::npos);
  EXPECT_NE(with.find(">self_influence_outliers</span>"), std::string::npos);
  EXPECT_NE(with.find("near_duplicates:" + run.report["tranches"][1]["id"].get<std::string>()), std::string::npos);
}

TEST(HtmlPage, ManyTranchesKeepTheChartReadable) {
  json report = {{"format", "attrace.report/1"}, {"method", "tracin_exact"}, {"tranches", json::array()}};
  const int n = 100;
  for (int i = 0; i < n; ++i) {
    const std::string id = "t" + std::to_string(i);
    report["tranches"].push_back({{"index", i}, {"id", id}, {"account", "0x" + std::string(40, 'a')}, {"share", (i + 1) / 5050.0}});
  }
  const json manifest = {{"format", "attrace.manifest/1"}};
  const std::string html = report_html(report, manifest);
  EXPECT_EQ(count(html, "<rect class=\"bar"), 40u);  // 39 largest and one for the rest
  EXPECT_NE(html.find("61 more tranches"), std::string::npos);
  EXPECT_NE(html.find("<title>t99 ("), std::string::npos);
  EXPECT_EQ(html.find("<title>t0 ("), std::string::npos);  // the smallest has no bar of its own
  EXPECT_EQ(count(html, "<tr><td class=\"n\" data-v="), static_cast<size_t>(n));  // but a table row
}

TEST(HtmlPage, WrongFieldTypesAreNamed) {
  const json manifest = {{"format", "attrace.manifest/1"}};
  json report = {{"format", "attrace.report/1"},
                 {"tranches", {{{"id", "a"}, {"share", 0.5}}, {{"id", "b"}, {"share", "half"}}}}};
  try {
    report_html(report, manifest);
    FAIL() << "a string share was accepted";
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("report.json: tranches[1].share: expected a number, got string"), std::string::npos) << e.what();
  }
  report["tranches"][1]["share"] = 0.5;
  EXPECT_NO_THROW(report_html(report, manifest));
  report["format"] = "attrace.report/9";
  EXPECT_THROW(report_html(report, manifest), attrace::InputError);
  report["format"] = "attrace.report/1";
  EXPECT_THROW(report_html(report, json{{"format", "other"}}), attrace::InputError);
  report["queries"] = {{{"id", 7}}};
  try {
    report_html(report, manifest);
    FAIL() << "a numeric query id was accepted";
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("report.json: queries[0].id: expected a string"), std::string::npos) << e.what();
  }
}
