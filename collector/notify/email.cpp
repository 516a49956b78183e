// The email channel: incident, status, all-clear and approval mails, sent over SMTP.
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <memory>
#include <new>
#include <stdexcept>
#include <string_view>

#include "collector/html/html.hpp"
#include "collector/notify/detail.hpp"
#include "common/curl.hpp"
#include "common/text.hpp"

namespace tocsin::collector::detail::notify {
namespace curl = common::curl;
using json = nlohmann::json;

namespace {

std::string text_block(const std::vector<std::pair<std::string, std::string>>& f,
                       const std::string& indent) {
  std::string out;
  for (const auto& [k, v] : f) out += indent + k + ": " + v + "\n";
  return out;
}

}  // namespace

namespace {

const std::vector<std::string> kCsvColumns{
    "id", "severity", "kind", "state", "title", "test_id", "agent_id", "marker", "opened",
    "acknowledged", "owner", "occurrences", "ack_sla_remaining_s", "resolve_sla_remaining_s",
    "latest_note"};

std::string csv_row(const json& inc) {
  auto rem = [&](const char* t) {
    const json& r = inc.value(t, json::object()).value("remaining_ns", json());
    return r.is_number() ? std::to_string(r.get<std::int64_t>() / kNsPerSec) : std::string();
  };
  const json& note = inc.value("latest_note", json());
  std::vector<std::string> cells{std::to_string(num(inc, "id")), str(inc, "severity"), str(inc, "kind"),
                                 str(inc, "state"), str(inc, "title"), str(inc, "test_id"),
                                 str(inc, "agent_id"), str(inc, "marker"), str(inc, "opened"),
                                 str(inc, "acknowledged"), str(inc, "owner"),
                                 std::to_string(num(inc, "occurrences")), rem("ack_sla"),
                                 rem("resolve_sla"), note.is_object() ? str(note, "text") : ""};
  std::string out;
  for (std::size_t k = 0; k < cells.size(); ++k) out += (k ? "," : "") + common::csv_cell(cells[k]);
  return out + "\r\n";
}

std::string ids_words(const std::vector<std::uint64_t>& ids) {
  std::string out;
  for (auto id : ids) out += (out.empty() ? "#" : ", #") + std::to_string(id);
  return out;
}

std::vector<std::uint64_t> ids_of(const json& arr, const char* field) {
  std::vector<std::uint64_t> ids;
  for (const auto& x : arr) ids.push_back(field ? x.value(field, std::uint64_t{0}) : x.get<std::uint64_t>());
  return ids;
}

// RFC 2047 for a header holding non-ASCII text; CR/LF never reach a header.
std::string header_text(const std::string& s) {
  std::string clean = one_line(s, 900);
  if (std::all_of(clean.begin(), clean.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
    return clean;
  std::string b64(4 * ((clean.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()),
                          reinterpret_cast<const unsigned char*>(clean.data()),
                          static_cast<int>(clean.size()));
  b64.resize(static_cast<std::size_t>(n));
  return "=?UTF-8?B?" + b64 + "?=";
}

std::string rfc5322_date(std::int64_t ns) {
  std::time_t t = static_cast<std::time_t>(ns / kNsPerSec);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S +0000", &tm);
  return buf;
}

struct MimeDeleter {
  void operator()(curl_mime* m) const { curl_mime_free(m); }
};
using MimePtr = std::unique_ptr<curl_mime, MimeDeleter>;

void mime_ok(CURLcode rc) {
  if (rc != CURLE_OK) throw Notifier::SendError(std::string("cannot build the mail: ") + curl_easy_strerror(rc));
}

curl_mimepart* text_part(curl_mime* m, const std::string& data, const char* type) {
  curl_mimepart* p = curl_mime_addpart(m);
  if (!p) throw std::bad_alloc();
  mime_ok(curl_mime_data(p, data.data(), data.size()));
  mime_ok(curl_mime_type(p, type));
  mime_ok(curl_mime_encoder(p, "quoted-printable"));
  return p;
}

int abort_on_stop(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<const std::atomic<bool>*>(user)->load() ? 1 : 0;
}

std::string ehlo_name() {
  char host[256] = {0};
  if (gethostname(host, sizeof host - 1) != 0 || !host[0]) return "tocsin.localdomain";
  return host;
}

}  // namespace

Mail incident_mail(const json& snap, const NotifyConfig& cfg) {
  const json& inc = snap.at("incident");
  const json& ev = snap.at("event");
  std::int64_t now = num(snap, "time_ns");
  std::string what = event_title(str(ev, "notify"), str(ev, "what"));
  Mail m;
  m.subject = "[Tocsin] " + what + " " + incident_headline(inc);
  std::string happened = str(ev, "what") + " by " + str(ev, "actor") + " at " +
                         human_time(num(ev, "time_ns")) +
                         (str(ev, "detail").empty() ? "" : ": " + one_line(str(ev, "detail"), 500));
  auto f = facts(inc, now);
  f.insert(f.begin(), {"What happened", happened});
  std::string link = incident_link(cfg, num(inc, "id"));
  if (!link.empty()) f.push_back({"Link", link});
  m.text = "Incident " + incident_headline(inc) + "\n\n" + text_block(f, "") +
           "\ntocsin incident show " + std::to_string(num(inc, "id")) + "\n";
  m.html = html_page(m.subject, "<h2>" + html_escape(what + " " + incident_headline(inc)) + "</h2>\n" +
                                    html_kv_table(f));
  return m;
}

Mail status_mail(const json& snap) {
  const json& list = snap.at("incidents");
  std::int64_t now = num(snap, "time_ns");
  std::int64_t since = num(snap, "since_ns");
  auto ids = ids_of(list, "id");
  std::string n = std::to_string(num(snap, "number"));
  Mail m;
  m.subject = "[Tocsin] Major incident status " + n + ": " + std::to_string(ids.size()) +
              " critical open (" + ids_words(ids) + ")";
  std::string intro = "A major incident has been running since " + human_time(since) + " (" +
                      human_duration(now - since) + "). Status update " + n + " at " +
                      human_time(now) + ": " + std::to_string(ids.size()) +
                      " critical incident(s) open.\n\n";
  std::string text = intro, html = "<p>" + html_escape(intro) + "</p>\n";
  std::string detail_html, csv;
  for (const auto& k : kCsvColumns) csv += (csv.empty() ? "" : ",") + k;
  csv += "\r\n";
  for (const auto& inc : list) {
    auto f = facts(inc, now);
    std::vector<std::pair<std::string, std::string>> brief;
    for (const auto& [k, v] : f)
      if (k == "Failing since" || k == "State" || k == "SLA" || k == "Latest note" || k == "Owner")
        brief.push_back({k, v});
    text += incident_headline(inc) + "\n" + text_block(brief, "  ") + "\n";
    html += "<h3>" + html_escape(incident_headline(inc)) + "</h3>\n" + html_kv_table(brief);
    detail_html += "<h2>" + html_escape(incident_headline(inc)) + "</h2>\n" + html_kv_table(f);
    csv += csv_row(inc);
  }
  text += "Details are attached (HTML and CSV). The next update follows on the usual cadence;\n"
          "an all-clear mail follows when the last critical incident is resolved.\n";
  m.text = text;
  m.html = html_page(m.subject, html);
  m.attachments.push_back({"tocsin-status-" + n + ".html", "text/html; charset=utf-8",
                           html_page("Tocsin major incident status " + n,
                                     "<p>" + html_escape(intro) + "</p>\n" + detail_html)});
  m.attachments.push_back({"tocsin-status-" + n + ".csv", "text/csv; charset=utf-8", csv});
  return m;
}

Mail all_clear_mail(const json& snap) {
  auto ids = ids_of(snap.at("incidents"), nullptr);
  std::int64_t now = num(snap, "time_ns"), since = num(snap, "since_ns");
  Mail m;
  m.subject = "[Tocsin] All clear: no critical incident open (was " + ids_words(ids) + ")";
  m.text = "The major incident that began at " + human_time(since) + " is over after " +
           human_duration(now - since) + ": no critical incident is open since " +
           human_time(now) + ".\nIncidents it covered: " + ids_words(ids) +
           ".\nStatus mails stop until the next critical incident opens.\n";
  m.html = html_page(m.subject, "<p>" + html_escape(m.text) + "</p>\n");
  return m;
}

Mail approval_mail(const json& snap) {
  const json& cmd = snap.at("command");
  std::string id = std::to_string(num(cmd, "id"));
  Mail m;
  m.subject = "[Tocsin] " + approval_headline(cmd);
  auto f = approval_facts(cmd);
  std::string link = str(snap, "link");
  std::string who = str(snap, "approver");
  std::string how = "With the CLI: tocsin approve " + id + "   or   tocsin deny " + id + " \"why\"";
  m.text = approval_headline(cmd) + "\n\n" + text_block(f, "");
  std::string html = "<h2>" + html_escape(approval_headline(cmd)) + "</h2>\n" + html_kv_table(f);
  if (!link.empty()) {
    std::string words = "This link is for " + who +
                        " alone and works once. Opening it shows the request and changes nothing; "
                        "you approve or deny on that page.";
    m.text += "\nReview and decide: " + link + "\n" + words + "\n";
    html += "<p><a href=\"" + html_escape(link) + "\">Review and decide</a></p>\n<p>" +
            html_escape(words) + "</p>\n";
  }
  m.text += "\n" + how + "\n";
  html += "<p>" + html_escape(how) + "</p>\n";
  m.html = html_page(m.subject, html);
  return m;
}

void send_mail(const ChannelConfig& ch, const std::vector<std::string>& to, const Mail& m,
               const std::string& message_id, std::int64_t now_ns, const std::atomic<bool>& stopping) {
  curl::global_init();
  char errbuf[CURL_ERROR_SIZE] = {0};  // before the handle: libcurl may use it until cleanup
  curl::EasyPtr easy(curl_easy_init());
  if (!easy) throw std::runtime_error("cannot create a libcurl handle");
  CURL* c = easy.get();
  // The URL's path is the name we greet the server with (EHLO); without one libcurl would
  // invent it.
  std::string url = ch.url;
  if (url.find('/', url.find("://") + 3) == std::string::npos) url += "/" + ehlo_name();
  curl::set(c, CURLOPT_URL, url.c_str());
  curl::set(c, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
  curl::set(c, CURLOPT_ERRORBUFFER, errbuf);
  curl::set(c, CURLOPT_NOSIGNAL, 1L);
  curl::set(c, CURLOPT_TIMEOUT_MS, static_cast<long>(ch.timeout.count()));
  curl::set(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(ch.timeout.count()));
  curl::set(c, CURLOPT_USE_SSL, static_cast<long>(ch.smtp_tls == SmtpTls::required ? CURLUSESSL_ALL
                                                  : ch.smtp_tls == SmtpTls::optional ? CURLUSESSL_TRY
                                                                                      : CURLUSESSL_NONE));
  if (!ch.ca_file.empty()) curl::set(c, CURLOPT_CAINFO, ch.ca_file.c_str());
  curl::set(c, CURLOPT_SSL_VERIFYPEER, 1L);
  curl::set(c, CURLOPT_SSL_VERIFYHOST, 2L);
  if (!ch.username.empty()) {
    curl::set(c, CURLOPT_USERNAME, ch.username.c_str());
    curl::set(c, CURLOPT_PASSWORD, ch.password.c_str());
  }
  std::string from = "<" + ch.from + ">";
  curl::set(c, CURLOPT_MAIL_FROM, from.c_str());
  curl::SlistPtr rcpt;
  std::string to_header;
  for (const auto& a : to) {
    curl::append(rcpt, "<" + a + ">");
    to_header += (to_header.empty() ? "" : ", ") + a;
  }
  curl::set(c, CURLOPT_MAIL_RCPT, rcpt.get());
  curl::SlistPtr headers;
  curl::append(headers, "Date: " + rfc5322_date(now_ns));
  curl::append(headers, "From: Tocsin <" + ch.from + ">");
  curl::append(headers, "To: " + to_header);
  curl::append(headers, "Subject: " + header_text(m.subject));
  curl::append(headers, "Message-ID: " + message_id);
  curl::append(headers, "Auto-Submitted: auto-generated");
  curl::set(c, CURLOPT_HTTPHEADER, headers.get());

  MimePtr top(curl_mime_init(c));
  MimePtr alt(curl_mime_init(c));
  if (!top || !alt) throw std::bad_alloc();
  text_part(alt.get(), m.text, "text/plain; charset=utf-8");
  text_part(alt.get(), m.html, "text/html; charset=utf-8");
  curl_mimepart* body = curl_mime_addpart(top.get());
  if (!body) throw std::bad_alloc();
  mime_ok(curl_mime_subparts(body, alt.get()));
  (void)alt.release();  // owned by `top` now
  mime_ok(curl_mime_type(body, "multipart/alternative"));
  curl::SlistPtr inline_hdr;
  curl::append(inline_hdr, "Content-Disposition: inline");
  mime_ok(curl_mime_headers(body, inline_hdr.release(), 1));
  for (const auto& a : m.attachments) {
    curl_mimepart* p = curl_mime_addpart(top.get());
    if (!p) throw std::bad_alloc();
    mime_ok(curl_mime_data(p, a.data.data(), a.data.size()));
    mime_ok(curl_mime_type(p, a.content_type.c_str()));
    mime_ok(curl_mime_filename(p, a.filename.c_str()));
    mime_ok(curl_mime_encoder(p, "base64"));
  }
  curl::set(c, CURLOPT_MIMEPOST, top.get());
  curl::set(c, CURLOPT_NOPROGRESS, 0L);
  curl::set(c, CURLOPT_XFERINFOFUNCTION, abort_on_stop);
  curl::set(c, CURLOPT_XFERINFODATA, &stopping);
  CURLcode rc = curl_easy_perform(c);
  if (rc != CURLE_OK)
    throw Notifier::SendError("mail to " + curl::url_origin(ch.url) + " failed: " +
                              (errbuf[0] ? std::string(errbuf) : curl_easy_strerror(rc)));
}

}  // namespace tocsin::collector::detail::notify
