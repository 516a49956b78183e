// The built-in payloads the collector serves at /payloads/...: the paths they answer to, and a
// zip that a real unzip (Python's zipfile) accepts with the right content and CRC.
#include <doctest/doctest.h>

#include <cstdlib>
#include <string>

#include "common/crypto.hpp"
#include "common/payloads.hpp"
#include "tests/unit/temp_dir.hpp"

using tocsin::common::builtin_payload;
using tocsin::common::eicar_test_string;
using tocsin::common::zip_stored;

TEST_CASE("builtin_payload answers /payloads/<name> and /payloads/<marker>/<name> only") {
  struct Case {
    std::string path;
    std::string name;  // empty: not a payload
  } cases[] = {
      {"/payloads/eicar.com", "eicar.com"},
      {"/payloads/tcn-abcdefghij/eicar.com", "eicar.com"},
      {"/payloads/tcn-abcdefghij/eicar.zip?x=1", "eicar.zip"},
      {"/payloads/benign.txt", "benign.txt"},
      {"/payloads/a/b/eicar.com", ""},
      {"/payloads//eicar.com", ""},
      {"/payloads/", ""},
      {"/payloads/../api/v1/agents", ""},
      {"/payload/eicar.com", ""},
      {"/api/v1/agents", ""},
      {"/payloads/EICAR.COM", ""},
  };
  for (const auto& c : cases) {
    CAPTURE(c.path);
    auto p = builtin_payload(c.path);
    if (c.name.empty()) {
      CHECK_FALSE(p);
    } else {
      REQUIRE(p);
      CHECK(p->name == c.name);
    }
  }
  CHECK(builtin_payload("/payloads/eicar.com")->body == eicar_test_string());
}

TEST_CASE("the EICAR zip is a valid archive holding eicar.com with its CRC") {
  tocsin::test::TempDir tmp("payloads");
  auto zip = builtin_payload("/payloads/eicar.zip")->body;
  tocsin::common::write_file_atomic(tmp / "eicar.zip", zip);
  std::string py = "import zipfile,sys,hashlib\n"
                   "z=zipfile.ZipFile(sys.argv[1])\n"
                   "assert z.testzip() is None\n"
                   "assert z.namelist()==['eicar.com'], z.namelist()\n"
                   "print(hashlib.sha256(z.read('eicar.com')).hexdigest())\n";
  tocsin::common::write_file_atomic(tmp / "check.py", py);
  auto cmd = "python3 " + (tmp / "check.py").string() + " " + (tmp / "eicar.zip").string() + " > " +
             (tmp / "out").string() + " 2>&1";
  REQUIRE(std::system(cmd.c_str()) == 0);
  auto out = tocsin::common::read_file(tmp / "out");
  CHECK(out.substr(0, 64) == tocsin::common::to_hex(tocsin::common::sha256(eicar_test_string())));
  CHECK(zip_stored("a.txt", "").size() == 30 + 5 + 46 + 5 + 22);  // headers + names, no data
}
