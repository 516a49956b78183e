// The eicar_drop probe: the test string itself, the verdict table, and real drops into a temp
// directory with no defence, with a stand-in defence that deletes or rewrites the file, and
// where even the benign control cannot be written.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <atomic>
#include <cerrno>
#include <exception>
#include <fstream>
#include <iterator>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "agent/probes/eicar_drop.hpp"
#include "common/crypto.hpp"
#include "tests/unit/temp_dir.hpp"

namespace asio = boost::asio;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using tocsin::agent::ClockState;
using tocsin::agent::drop_verdict;
using tocsin::agent::DropObservation;
using tocsin::agent::eicar_test_string;
using tocsin::agent::EicarDropProbe;
using tocsin::agent::new_marker;
using tocsin::agent::TestSpec;
using tocsin::common::ResultBody;
using tocsin::test::TempDir;

namespace {

constexpr const char* kEicarSha256 =
    "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";
const std::string kReplacement = "quarantined by the test defence\n";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  return names;
}

// A stand-in for anti-malware: a thread that polls the directory and acts on every
// *-eicar.com it finds, for as long as it lives (so a write racing with it is acted on too).
class Defence {
 public:
  enum class Action { remove, rewrite };
  Defence(fs::path dir, Action action)
      : thread_([this, dir = std::move(dir), action](std::stop_token stop) {
          while (!stop.stop_requested()) {
            std::error_code ec;
            for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
              if (ends_with(it->path().filename().string(), "-eicar.com")) act(it->path(), action);
            std::this_thread::sleep_for(5ms);
          }
        }) {}
  int actions() const { return actions_; }
  void stop() {
    thread_.request_stop();
    thread_.join();
  }
  ~Defence() {
    if (thread_.joinable()) stop();
  }

 private:
  void act(const fs::path& p, Action action) {
    if (action == Action::remove) {
      std::error_code ec;
      if (fs::remove(p, ec)) ++actions_;
      return;
    }
    if (slurp(p) == kReplacement) return;
    // No O_CREAT: a file the probe already cleaned up must not be brought back.
    int fd = ::open(p.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0) return;
    if (::write(fd, kReplacement.data(), kReplacement.size()) ==
        static_cast<ssize_t>(kReplacement.size()))
      ++actions_;
    ::close(fd);
  }

  std::atomic<int> actions_{0};
  std::jthread thread_;  // last: starts after the counter exists, stops before it goes
};

TestSpec make_test(const fs::path& dir, std::chrono::milliseconds observe) {
  TestSpec t;
  t.id = "eicar";
  t.probe = "eicar_drop";
  t.directory = dir;
  t.observe = observe;
  t.expect_prevent = true;
  return t;
}

ResultBody run_probe(const TestSpec& t, const std::string& marker) {
  asio::io_context io;
  ClockState clock{5, 3};
  EicarDropProbe probe(io.get_executor(), clock);
  std::optional<std::vector<ResultBody>> out;
  std::exception_ptr error;
  asio::co_spawn(io, probe.run(t, marker), [&](std::exception_ptr e, std::vector<ResultBody> r) {
    error = e;
    if (!e) out = std::move(r);
  });
  io.run();
  if (error) std::rethrow_exception(error);
  REQUIRE(out.has_value());
  REQUIRE(out->size() == 1);
  return out->front();
}

// Whether `needle` occurs in the file at `path`.
bool file_contains(const fs::path& path, const std::string& needle) {
  auto bytes = slurp(path);
  REQUIRE_MESSAGE(!bytes.empty(), "cannot read " << path);
  return bytes.find(needle) != std::string::npos;
}

}  // namespace

TEST_CASE("eicar_test_string is the standard 68-byte EICAR test string") {
  auto s = eicar_test_string();
  CHECK(s.size() == 68);
  CHECK(tocsin::common::to_hex(tocsin::common::sha256(s)) == kEicarSha256);
}

TEST_CASE("the agent's code does not hold the EICAR string in clear") {
  // The needle comes from the decoded string, so this test's own binary does not carry it either.
  auto eicar = eicar_test_string();
  auto name_at = eicar.find('$') + 1;
  auto name = eicar.substr(name_at, eicar.find('!', name_at) - name_at);
  REQUIRE(name.size() == 34);  // EICAR-STANDARD-ANTIVIRUS-TEST-FILE
  REQUIRE(name.rfind("EICAR-", 0) == 0);
  auto head = eicar.substr(0, 20);

  // This executable links the same agent library object code.
  CHECK_FALSE(file_contains("/proc/self/exe", name));
  CHECK_FALSE(file_contains("/proc/self/exe", head));
  fs::path agent = fs::path(TOCSIN_BIN_DIR) / "tocsin-agent";
  if (fs::exists(agent)) {
    CHECK_FALSE(file_contains(agent, name));
    CHECK_FALSE(file_contains(agent, head));
  } else {
    MESSAGE("tocsin-agent is not built; checked only this test binary");
  }
}

TEST_CASE("drop_verdict maps each observation to its verdict and reason") {
  auto obs = [](auto change) {
    DropObservation o;
    change(o);
    return o;
  };
  struct Case {
    const char* name;
    DropObservation o;
    const char* verdict;
    const char* reason;
  } cases[] = {
      {"control failed", obs([](auto& o) { o.control_ok = false; }), "inconclusive",
       "control_failed"},
      {"control failed wins over a blocked write", obs([](auto& o) {
         o.control_ok = false;
         o.write_errno = EACCES;
       }),
       "inconclusive", "control_failed"},
      {"EACCES", obs([](auto& o) { o.write_errno = EACCES; }), "prevented", "write_blocked"},
      {"EPERM", obs([](auto& o) { o.write_errno = EPERM; }), "prevented", "write_blocked"},
      {"ETXTBSY", obs([](auto& o) { o.write_errno = ETXTBSY; }), "prevented", "write_blocked"},
      {"ENOSPC", obs([](auto& o) { o.write_errno = ENOSPC; }), "error", "write_failed"},
      {"EIO", obs([](auto& o) { o.write_errno = EIO; }), "error", "write_failed"},
      {"gone", obs([](auto& o) { o.gone = true; }), "prevented", "removed"},
      {"unreadable", obs([](auto& o) { o.unreadable = true; }), "prevented", "unreadable"},
      {"altered", obs([](auto& o) { o.altered = true; }), "prevented", "altered"},
      {"nothing", DropObservation{}, "not_prevented", "intact"},
  };
  for (const auto& c : cases) {
    CAPTURE(std::string(c.name));
    auto v = drop_verdict(c.o);
    CHECK(v.verdict == c.verdict);
    CHECK(v.reason == c.reason);
  }
}

TEST_CASE("a run marker is tcn- and ten characters of a-z0-9, new each time") {
  static const std::regex kMarkerForm("^tcn-[a-z0-9]{10}$");
  auto a = new_marker(), b = new_marker();
  CHECK_MESSAGE(std::regex_match(a, kMarkerForm), a);
  CHECK_MESSAGE(std::regex_match(b, kMarkerForm), b);
  CHECK(a != b);
}

TEST_CASE("a drop nobody acts on is not_prevented/intact and is cleaned up") {
  TempDir tmp("eicar");
  auto marker = new_marker();
  auto t = make_test(tmp.path(), 300ms);
  auto r = run_probe(t, marker);
  CHECK(r.verdict == "not_prevented");
  CHECK(r.reason == "intact");
  CHECK(r.probe == "eicar_drop");
  CHECK(r.test_id == "eicar");
  CHECK(r.marker == marker);
  CHECK(r.target == tmp.path().string());
  CHECK(r.expect_prevent);
  CHECK(r.clock_offset_ns == 5);
  CHECK(r.clock_error_ns == 3);
  CHECK(r.finished_ns >= r.started_ns);
  // The marker is in the file name, where a detector's alert shows it.
  auto file = fs::path(r.evidence.at("file"));
  CHECK(file.parent_path() == tmp.path());
  CHECK(file.filename().string().find(marker) != std::string::npos);
  CHECK(r.evidence.at("observe_ms") == "300");
  CHECK(r.evidence.at("cleanup") == "removed");
  CHECK(r.evidence.at("cleanup_verified") == "true");
  CHECK(r.evidence.count("time_to_action_ms") == 0);
  CHECK(r.evidence.count("write_error") == 0);
  CHECK(entries(tmp.path()).empty());  // neither the EICAR file nor the benign twin is left
}

TEST_CASE("a defence that deletes the drop makes it prevented/removed") {
  TempDir tmp("eicar");
  Defence defence(tmp.path(), Defence::Action::remove);
  auto r = run_probe(make_test(tmp.path(), 10s), new_marker());  // ends as soon as it is gone
  defence.stop();
  CHECK(defence.actions() >= 1);
  CHECK(r.verdict == "prevented");
  CHECK(r.reason == "removed");
  REQUIRE(r.evidence.count("time_to_action_ms") == 1);
  CHECK(std::stoll(r.evidence.at("time_to_action_ms")) >= 0);
  CHECK(r.evidence.at("cleanup") == "already gone");
  CHECK(r.evidence.at("cleanup_verified") == "true");
  CHECK(entries(tmp.path()).empty());
}

TEST_CASE("a defence that rewrites the drop makes it prevented/altered") {
  TempDir tmp("eicar");
  Defence defence(tmp.path(), Defence::Action::rewrite);
  auto r = run_probe(make_test(tmp.path(), 10s), new_marker());
  defence.stop();
  CHECK(defence.actions() >= 1);
  CHECK(r.verdict == "prevented");
  CHECK(r.reason == "altered");
  CHECK(r.evidence.count("time_to_action_ms") == 1);
  CHECK(r.evidence.at("cleanup") == "removed");
  CHECK(r.evidence.at("cleanup_verified") == "true");
  CHECK(entries(tmp.path()).empty());
}

TEST_CASE("a directory where even the benign control cannot be written is inconclusive") {
  TempDir tmp("eicar");
  SUBCASE("a path under a regular file (fails even for root)") {
    std::ofstream(tmp / "file") << "not a directory\n";
    auto r = run_probe(make_test(tmp / "file" / "sub", 300ms), new_marker());
    CHECK(r.verdict == "inconclusive");
    CHECK(r.reason == "control_failed");
    CHECK(r.evidence.at("control").find("cannot write") != std::string::npos);
    CHECK(r.evidence.at("cleanup") == "not written");
    CHECK(r.evidence.at("cleanup_verified") == "true");
    CHECK(r.evidence.count("write_error") == 0);
    CHECK(entries(tmp.path()) == std::vector<std::string>{"file"});
    CHECK(slurp(tmp / "file") == "not a directory\n");
  }
  SUBCASE("a directory that does not exist") {
    auto r = run_probe(make_test(tmp / "missing", 300ms), new_marker());
    CHECK(r.verdict == "inconclusive");
    CHECK(r.reason == "control_failed");
    CHECK(entries(tmp.path()).empty());
  }
}
