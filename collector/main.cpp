// tocsin-collector: `init` creates a collector's data directory; `check-config` validates one;
// `run` serves agents and the API.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <functional>
#include <initializer_list>
#include <memory>

#include <iostream>
#include <nlohmann/json.hpp>

#include "collector/alerts/hooks.hpp"
#include "collector/alerts/pollers/pollers.hpp"
#include "collector/alerts/syslog_listener.hpp"
#include "collector/api/api.hpp"
#include "collector/audit/audit.hpp"
#include "collector/config.hpp"
#include "collector/incidents/incidents.hpp"
#include "collector/ingest/ca.hpp"
#include "collector/ingest/ingest.hpp"
#include "collector/ingest/registry.hpp"
#include "collector/runs/correlator.hpp"
#include "collector/store/store.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "common/log.hpp"
#include "common/service.hpp"
#include "common/tls.hpp"

namespace fs = std::filesystem;
using namespace tocsin;

namespace {

std::vector<std::string> default_server_names(const common::HostPort& agent_listen) {
  std::vector<std::string> names;
  char host[256] = {0};
  if (gethostname(host, sizeof host - 1) == 0 && host[0]) names.push_back(host);
  for (const char* n : {"localhost", "127.0.0.1", "::1"}) names.push_back(n);
  if (agent_listen.host != "0.0.0.0" && agent_listen.host != "::" &&
      std::find(names.begin(), names.end(), agent_listen.host) == names.end())
    names.push_back(agent_listen.host);
  return names;
}

// Port 0 in collector.yaml would make the kernel choose new ports at every start, and enrolled
// agents (which keep the endpoint they enrolled with) could not find the collector again. So
// init binds each port-0 listener once, both at the same time so they differ, and writes the
// ports it got. The ports stay free between init and run; `run` reports a clear bind error in
// the unlikely case that something else took one meanwhile.
void pin_free_ports(std::initializer_list<common::HostPort*> listens) {
  boost::asio::io_context io;
  std::vector<std::unique_ptr<boost::asio::ip::tcp::acceptor>> held;
  for (auto* hp : listens) {
    if (hp->port != 0) continue;
    boost::asio::ip::tcp::resolver resolver(io);
    boost::system::error_code ec;
    auto eps = resolver.resolve(hp->host, "0", boost::asio::ip::tcp::resolver::numeric_service, ec);
    if (ec || eps.empty())
      throw std::runtime_error("cannot resolve listen address '" + hp->host + "': " + ec.message());
    auto acc = std::make_unique<boost::asio::ip::tcp::acceptor>(io);
    acc->open(eps.begin()->endpoint().protocol());
    acc->bind(eps.begin()->endpoint(), ec);
    if (ec)
      throw std::runtime_error("cannot bind " + hp->host + ":0 to choose a port: " + ec.message());
    hp->port = acc->local_endpoint().port();
    held.push_back(std::move(acc));
  }
}

int cmd_init(const fs::path& data_dir, const std::string& agent_listen,
             const std::string& api_listen, std::vector<std::string> names) {
  collector::CollectorConfig cfg;
  cfg.data_dir = fs::absolute(data_dir);
  cfg.agent_listen = common::parse_host_port(agent_listen);
  cfg.api_listen = common::parse_host_port(api_listen);
  auto config_file = cfg.data_dir / "collector.yaml";
  bool chose_ports = cfg.agent_listen.port == 0 || cfg.api_listen.port == 0;
  if (!fs::exists(config_file)) pin_free_ports({&cfg.agent_listen, &cfg.api_listen});
  if (fs::exists(config_file)) {
    std::cerr << "tocsin-collector: " << config_file.string()
              << " already exists; refusing to overwrite an initialised collector\n";
    return 1;
  }
  fs::create_directories(cfg.data_dir);
  fs::permissions(cfg.data_dir, fs::perms::owner_all);
  if (names.empty()) names = default_server_names(cfg.agent_listen);
  collector::CertificateAuthority::initialize(cfg.data_dir, names);
  cfg.ca_cert = cfg.data_dir / "ca.pem";
  cfg.ca_key = cfg.data_dir / "ca.key";
  cfg.server_cert = cfg.data_dir / "server.pem";
  cfg.server_key = cfg.data_dir / "server.key";
  auto ca = collector::CertificateAuthority::load(cfg.ca_cert, cfg.ca_key);
  std::string token;
  {
    auto store = collector::Store::open(cfg.db_dir());
    collector::AuditLog audit(*store, collector::load_or_create_audit_key(
                                          collector::audit_key_path(cfg.data_dir), nullptr));
    collector::Registry reg(*store, ca, cfg.max_token_ttl, cfg.agent_cert_validity);
    reg.set_audit(&audit);
    token = reg.create_api_token("admin (created by init)", collector::Role::admin);
  }
  common::write_file_atomic(cfg.data_dir / "admin.token", token + "\n");
  common::write_file_atomic(config_file, cfg.to_yaml(),
                            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  std::string name_list;
  for (auto& n : names) name_list += (name_list.empty() ? "" : ", ") + n;
  std::cout << "Initialised Tocsin collector in " << cfg.data_dir.string() << "\n"
            << "  config:      " << config_file.string() << "\n"
            << "  CA (pin it): " << cfg.ca_cert.string() << "\n"
            << "  admin token: " << (cfg.data_dir / "admin.token").string() << " (0600)\n"
            << "  server certificate names: " << name_list << "\n"
            << "  agents connect to port " << cfg.agent_listen.port << ", the API listens on port "
            << cfg.api_listen.port << (chose_ports ? " (chosen now for port 0)" : "") << "\n"
            << "Start it with: tocsin-collector run --config " << config_file.string() << "\n";
  return 0;
}

// The audit log and its first entry of this start: which configuration it runs with.
std::unique_ptr<collector::AuditLog> open_audit_log(collector::Store& store,
                                                    const collector::CollectorConfig& cfg,
                                                    const fs::path& config_file) {
  bool created = false;
  auto key = collector::load_or_create_audit_key(collector::audit_key_path(cfg.data_dir), &created);
  if (created)
    spdlog::warn("audit: created {} (this data directory predates the audit log)",
                 collector::audit_key_path(cfg.data_dir).string());
  auto audit = std::make_unique<collector::AuditLog>(store, std::move(key));
  auto text = common::read_file(config_file);
  audit->append("system", "config_loaded", fs::absolute(config_file).string(),
                {{"sha256", common::to_hex(common::sha256(text))}, {"audit_key_created", created}});
  return audit;
}

// Offline: the collector must be stopped (RocksDB admits one process).
int cmd_audit_verify(const fs::path& data_dir) {
  collector::CollectorConfig cfg;
  cfg.data_dir = data_dir;
  auto key_file = collector::audit_key_path(data_dir);
  if (!fs::is_directory(cfg.db_dir())) {  // opening would create an empty database
    std::cerr << "tocsin-collector: no database at " << cfg.db_dir().string() << "\n";
    return 1;
  }
  if (!fs::exists(key_file)) {
    std::cerr << "tocsin-collector: no audit key at " << key_file.string() << "\n";
    return 1;
  }
  auto key = common::Ed25519Key::from_private_pem(common::read_file(key_file, 64 * 1024));
  std::unique_ptr<collector::Store> store;
  try {
    store = collector::Store::open(cfg.db_dir());
  } catch (const collector::StoreError& e) {
    std::cerr << "tocsin-collector: " << e.what()
              << "\n(is the collector running? stop it first, or use `tocsin audit verify`)\n";
    return 1;
  }
  auto r = collector::verify_audit_log(*store, key);
  if (r.ok()) {
    std::cout << "audit log intact: " << r.entries_checked << " entries, head seq " << r.head_seq
              << ", key " << r.key_fingerprint << "\n";
    return 0;
  }
  std::cout << "audit log NOT intact (" << r.entries_checked << " entries checked):\n";
  for (const auto& p : r.problems) std::cout << "  seq " << p.seq << ": " << p.reason << "\n";
  if (r.problems_truncated) std::cout << "  (more problems not shown)\n";
  return 1;
}

// Everything `run` would load, without binding a port or opening the database: the YAML (with
// its file, line and key on error), the CA, the server certificate and key, the audit and
// command keys when they exist. Prints "ok" and a summary, or the error; --json for scripts.
int cmd_check_config(const fs::path& config_file, bool as_json) {
  nlohmann::json out = {{"config", config_file.string()}};
  std::string error;
  std::vector<std::string> notes;
  try {
    if (!fs::is_regular_file(config_file)) throw std::runtime_error("no such file");
    auto cfg = collector::CollectorConfig::load(config_file);
    collector::CertificateAuthority::load(cfg.ca_cert, cfg.ca_key);
    common::make_server_context({cfg.server_cert, cfg.server_key, cfg.ca_cert}, false);
    for (const auto& key : {collector::audit_key_path(cfg.data_dir),
                            collector::command_key_path(cfg.data_dir)}) {
      if (!fs::exists(key)) {
        notes.push_back(key.filename().string() + " will be created at the first start");
        continue;
      }
      try {
        common::Ed25519Key::from_private_pem(common::read_file(key, 64 * 1024));
      } catch (const std::exception& e) {
        throw std::runtime_error(key.string() + ": " + e.what());
      }
    }
    if (!fs::is_directory(cfg.db_dir()))
      notes.push_back("no database yet at " + cfg.db_dir().string() + " (created at the first start)");
    nlohmann::json sources = nlohmann::json::array();
    for (const auto& src : cfg.alert_sources)
      sources.push_back({{"name", src.name}, {"type", collector::source_type_name(src.type)}});
    nlohmann::json channels = nlohmann::json::array();
    for (const auto& c : cfg.notify.channels)
      channels.push_back({{"name", c.name}, {"type", collector::channel_type_name(c.type)}});
    out.update({{"data_dir", cfg.data_dir.string()},
                {"agent_listen", cfg.agent_listen.to_string()},
                {"api_listen", cfg.api_listen.to_string()},
                {"alert_sources", sources},
                {"notify_channels", channels},
                {"watch_rules", cfg.watch.rules.size()},
                {"notes", notes}});
  } catch (const std::exception& e) {
    error = e.what();
  }
  out["ok"] = error.empty();
  if (!error.empty()) out["error"] = error;
  if (as_json) {
    std::cout << out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else if (!error.empty()) {
    std::cerr << "tocsin-collector: " << config_file.string() << ": " << error << "\n";
  } else {
    std::string src;
    for (const auto& s : out["alert_sources"])
      src += (src.empty() ? "" : ", ") + s["name"].get<std::string>() + " (" +
             s["type"].get<std::string>() + ")";
    std::cout << "ok: agents on " << out["agent_listen"].get<std::string>() << ", API on "
              << out["api_listen"].get<std::string>() << "; " << out["alert_sources"].size()
              << " alert source(s)" << (src.empty() ? "" : ": " + src) << "; "
              << out["notify_channels"].size() << " notify channel(s); " << out["watch_rules"].get<std::size_t>()
              << " watch rule(s)\n";
    for (const auto& n : notes) std::cout << "  note: " << n << "\n";
  }
  return error.empty() ? 0 : 1;
}

int cmd_run(const fs::path& config_file, const std::string& ready_file) {
  auto cfg = collector::CollectorConfig::load(config_file);
  common::setup_logging("collector", cfg.log_level);
  auto store = collector::Store::open(cfg.db_dir());
  auto ca = collector::CertificateAuthority::load(cfg.ca_cert, cfg.ca_key);
  collector::Registry registry(*store, ca, cfg.max_token_ttl, cfg.agent_cert_validity);
  auto audit = open_audit_log(*store, cfg, config_file);
  registry.set_audit(audit.get());
  // Remote commands: signed with a key of their own (created on first use), approved by people.
  bool command_key_created = false;
  auto command_key = collector::load_or_create_audit_key(collector::command_key_path(cfg.data_dir),
                                                         &command_key_created);
  if (command_key_created)
    spdlog::info("commands: created {}", collector::command_key_path(cfg.data_dir).string());
  collector::CommandEngine commands(*store, std::move(command_key), cfg.commands, audit.get());
  auto agent_tls =
      common::make_server_context({cfg.server_cert, cfg.server_key, cfg.ca_cert}, false);
  auto api_tls = common::make_server_context({cfg.server_cert, cfg.server_key, {}}, false);

  collector::Correlator correlator(*store, cfg.correlation);
  correlator.start();
  // Syslog listeners and pollers run on their own threads and hand alerts to the correlator.
  std::vector<std::unique_ptr<collector::SyslogListener>> syslog;
  std::vector<std::unique_ptr<collector::Poller>> pollers;
  for (const auto& src : cfg.alert_sources) {
    if (src.type == collector::SourceType::syslog)
      syslog.push_back(std::make_unique<collector::SyslogListener>(src, correlator, cfg.server_cert,
                                                                   cfg.server_key));
    else if (collector::is_poller(src.type))
      pollers.push_back(std::make_unique<collector::Poller>(src, correlator));
  }

  // Incidents follow the durable logs (detection events, results, security events) on their
  // own thread; the API's incident endpoints act on the same engine.
  collector::IncidentEngine incidents(*store, cfg.incidents);
  incidents.set_audit(audit.get());
  collector::IncidentFeed incident_feed(incidents, *store);
  incident_feed.start();
  // Notifications follow the incident event log on threads of their own (one per channel), so
  // a slow or dead receiver delays nothing but its own messages.
  std::unique_ptr<collector::Notifier> notify;
  if (!cfg.notify.empty()) {
    notify = std::make_unique<collector::Notifier>(*store, incidents, cfg.notify);
    notify->set_commands(&commands, audit.get());  // approval requests reach approvers
    notify->start();
    for (const auto& c : cfg.notify.channels)
      spdlog::info("notify: channel {} ({})", c.name, collector::channel_type_name(c.type));
  }

  // The watchdog turns a watched service's failing health check into a restart request and
  // follows it through (pause while waiting, escalate when it did not help).
  collector::Watchdog watchdog(incidents, commands, cfg.watch);
  watchdog.start();
  for (const auto& r : cfg.watch.rules)
    spdlog::info("watch: {} -> restart {} (recheck after {}, at most {} per {})", r.test, r.target,
                 common::format_duration(r.recheck_after), r.max_restarts,
                 common::format_duration(r.window));

  boost::asio::io_context io(1);
  collector::IngestServer ingest(io, agent_tls, cfg, *store, registry, &correlator, &commands);
  collector::ApiServer api(io, api_tls, cfg.api_listen, *store, registry,
                           {&cfg.alert_sources, &correlator, &incidents, notify.get(), audit.get(),
                            &commands},
                           cfg.api_threads);
  ingest.start();
  api.start();
  // Requests nobody approved and commands nobody ran expire (each is audited).
  boost::asio::steady_timer expiry(io);
  std::function<void()> expire_loop = [&] {
    expiry.expires_after(std::chrono::seconds(5));
    expiry.async_wait([&](boost::system::error_code ec) {
      if (ec) return;
      try {
        commands.tick();
      } catch (const std::exception& e) {
        spdlog::error("commands: expiry failed: {}", e.what());
      }
      expire_loop();
    });
  };
  expire_loop();
  for (auto& l : syslog) l->start();
  for (auto& p : pollers) p->start();

  common::ServiceNotifier notifier(io);
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](boost::system::error_code ec, int sig) {
    if (ec) return;
    spdlog::info("received {}; shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    notifier.stopping();
    for (auto& l : syslog) l->stop();
    for (auto& p : pollers) p->stop();
    ingest.stop();
    api.stop();
    expiry.cancel();
  });
  spdlog::info("Tocsin collector {} ready: agents on {}:{}, API on https://{}:{}, data in {}",
               TOCSIN_VERSION, cfg.agent_listen.host, ingest.port(), cfg.api_listen.host,
               api.port(), cfg.data_dir.string());
  nlohmann::json syslog_ports = nlohmann::json::object();
  for (std::size_t i = 0, k = 0; i < cfg.alert_sources.size(); ++i) {
    const auto& src = cfg.alert_sources[i];
    if (src.type != collector::SourceType::syslog) continue;
    auto& l = *syslog[k++];
    syslog_ports[src.name] = {{"udp", l.udp_port()}, {"tcp", l.tcp_port()}, {"tls", l.tls_port()}};
    spdlog::info("alert source {}: syslog on udp {} tcp {} tls {}", src.name, l.udp_port(),
                 l.tcp_port(), l.tls_port());
  }
  for (const auto& src : cfg.alert_sources)
    if (collector::is_webhook(src.type))
      spdlog::info("alert source {} ({}): POST https://{}:{}{}", src.name,
                   collector::source_type_name(src.type), cfg.api_listen.host, api.port(),
                   src.type == collector::SourceType::hec ? std::string(collector::kHecPath)
                                                          : "/hooks/" + src.name);
  if (!ready_file.empty()) {
    nlohmann::json j = {{"agent_port", ingest.port()},
                        {"api_port", api.port()},
                        {"pid", getpid()},
                        {"syslog", syslog_ports}};
    common::write_file_atomic(ready_file, j.dump() + "\n");
  }
  notifier.ready("serving agents on port " + std::to_string(ingest.port()));
  io.run();
  api.wait();  // its connections end before the engines they use stop
  watchdog.stop();
  if (notify) notify->stop();
  incident_feed.stop();
  correlator.stop();
  auto st = ingest.stats();
  spdlog::info("stopped; {} results in {} batches stored since start", st.results_stored,
               st.batches_stored);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Tocsin collector: receives signed probe results from agents over mutual TLS "
      "and serves the admin API."};
  app.set_version_flag("--version", std::string(TOCSIN_VERSION));
  app.require_subcommand(1);

  auto* init = app.add_subcommand("init",
                                  "Create a data directory: CA, server certificate, "
                                  "collector.yaml and an admin API token");
  fs::path data_dir;
  std::string agent_listen = "0.0.0.0:7443", api_listen = "127.0.0.1:7444";
  std::vector<std::string> names;
  init->add_option("--data-dir", data_dir, "Directory for keys, config and database (created 0700)")
      ->required();
  init->add_option("--agent-listen", agent_listen, "host:port agents connect to (mutual TLS)")
      ->capture_default_str();
  init->add_option("--api-listen", api_listen, "host:port of the HTTPS API for the tocsin CLI")
      ->capture_default_str();
  init->add_option("--server-name", names,
                   "DNS name or IP agents use to reach the collector; repeatable "
                   "(default: this host's name, localhost, 127.0.0.1, ::1)");

  auto* run =
      app.add_subcommand("run", "Run the collector in the foreground (systemd: Type=notify)");
  fs::path config;
  std::string ready_file;
  run->add_option("--config", config, "collector.yaml written by init")->required();
  run->add_option("--ready-file", ready_file,
                  "Write {\"agent_port\",\"api_port\",\"pid\"} as JSON here once listening "
                  "(useful with port 0)");
  auto* check = app.add_subcommand(
      "check-config",
      "Load and validate a collector.yaml and the keys it names, as run would, without binding "
      "ports or opening the database; exit 0 and print a summary, or 1 naming the error");
  fs::path check_file;
  bool check_json = false;
  check->add_option("--config", check_file, "The collector.yaml to check")->required();
  check->add_flag("--json", check_json, "Print {\"ok\", ...} as JSON");
  auto* audit = app.add_subcommand("audit", "The tamper-evident audit log (docs/AUDIT.md)");
  audit->require_subcommand(1);
  auto* audit_verify = audit->add_subcommand(
      "verify", "Check the audit log of a stopped collector; exit 1 naming any problem");
  fs::path audit_dir;
  audit_verify->add_option("--data-dir", audit_dir, "The collector's data directory")->required();
  CLI11_PARSE(app, argc, argv);
  try {
    if (*init) return cmd_init(data_dir, agent_listen, api_listen, names);
    if (*audit_verify) return cmd_audit_verify(audit_dir);
    if (*check) return cmd_check_config(check_file, check_json);
    return cmd_run(config, ready_file);
  } catch (const std::exception& e) {
    std::cerr << "tocsin-collector: " << e.what() << "\n";
    return 1;
  }
}
