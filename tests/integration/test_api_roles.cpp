// The admin API over real HTTPS: authentication, roles, and verified results via the CLI.
#include <doctest/doctest.h>

#include <fstream>

#include "collector/cli/api_client.hpp"
#include "tests/integration/harness.hpp"

using namespace tocsin;
using namespace tocsin::test;

namespace {
long status_of(Collector& c, const std::string& path, const std::string& token) {
  try {
    c.api_get(path, token);
    return 200;
  } catch (const collector::ApiError& e) {
    return e.status;
  }
}

std::string last_line(std::string s) {
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s.substr(s.rfind('\n') + 1);
}
}  // namespace

TEST_CASE("the API refuses missing and wrong tokens and enforces roles") {
  Collector c;
  auto viewer = c.cli({"api-token", "create", "--name", "soc-screen", "--role", "viewer"});
  REQUIRE_MESSAGE(viewer.rc == 0, viewer.err);
  auto viewer_token = last_line(viewer.out);
  CHECK(viewer_token.size() == 64);

  CHECK(status_of(c, "/api/v1/agents", std::string(64, '0')) == 401);  // unknown token
  CHECK(status_of(c, "/api/v1/agents", "garbage") == 401);
  CHECK(status_of(c, "/api/v1/agents", viewer_token) == 200);

  // No token at all, through the client with an empty bearer.
  collector::ApiClient anon("https://127.0.0.1:" + std::to_string(c.api_port()), "", c.ca_pem());
  CHECK_THROWS_AS(anon.get("/api/v1/agents"), collector::ApiError);
  try {
    anon.get("/api/v1/agents");
  } catch (const collector::ApiError& e) {
    CHECK(e.status == 401);
  }

  // A viewer may read but not create enrollment tokens.
  fs::path tf = c.dir().parent_path() / "viewer.token";
  std::ofstream(tf) << viewer_token << "\n";
  fs::copy_file(c.ca_pem(), c.dir().parent_path() / "ca.pem", fs::copy_options::overwrite_existing);
  auto r = run_command({bin("tocsin").string(), "--server",
                        "https://127.0.0.1:" + std::to_string(c.api_port()), "--token-file",
                        tf.string(), "token", "create", "--ttl", "1h"});
  CHECK(r.rc == 1);
  CHECK(r.err.find("403") != std::string::npos);
  CHECK(r.err.find("admin") != std::string::npos);
  auto ok = run_command({bin("tocsin").string(), "--server",
                         "https://127.0.0.1:" + std::to_string(c.api_port()), "--token-file",
                         tf.string(), "agents"});
  CHECK(ok.rc == 0);
}

TEST_CASE("results listed by the CLI carry re-verified signatures") {
  Collector c;
  OpenPort open;
  Agent a(c);
  a.write_config({{"open", "1s", {"127.0.0.1:" + std::to_string(open.port())}},
                  {"closed", "1s", {"127.0.0.1:" + std::to_string(closed_port())}, true}});
  a.start({"--once"});
  REQUIRE(a.process().wait(60s) == 0);
  auto r = c.cli({"results", "--agent", a.id(), "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  auto j = nlohmann::json::parse(r.out);
  REQUIRE(j.size() == 2);
  std::map<std::string, std::string> verdicts;
  for (auto& x : j) {
    CHECK(x["verified"] == true);
    CHECK(x["signature"].get<std::string>().size() == 128);
    CHECK(x["marker"].get<std::string>().rfind("tcn-", 0) == 0);
    CHECK(x["clock_error_ms"].is_number());  // the clock exchange ran before the tests
    verdicts[x["test_id"]] = x["verdict"].get<std::string>() + "/" + x["reason"].get<std::string>();
  }
  CHECK(verdicts["open"] == "not_prevented/connected");
  CHECK(verdicts["closed"] == "prevented/refused");
  auto table = c.cli({"results"});
  CHECK(table.out.find("verified") != std::string::npos);
  CHECK(table.out.find("INVALID") == std::string::npos);
}
