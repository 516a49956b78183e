// Alert intake on the API listener (/hooks/<source>, Splunk HEC), answered once stored.
#include <utility>  // before awaitable.hpp (Boost 1.74 on some targets)

#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string_view>
#include <variant>

#include "collector/alerts/hooks.hpp"
#include "collector/api/handlers.hpp"

namespace tocsin::collector::detail::api {

using asio::use_awaitable;

HookRequest hook_request(const Request& req, std::int64_t arrival_ns) {
  std::string_view target(req.target().data(), req.target().size());
  auto qpos = target.find('?');
  HookRequest hr;
  hr.path = target.substr(0, qpos);
  hr.query = qpos == std::string_view::npos ? std::string_view{} : target.substr(qpos + 1);
  auto auth = req[http::field::authorization];
  hr.authorization = std::string_view(auth.data(), auth.size());
  auto tok = req["X-Tocsin-Token"];
  hr.token_header = std::string_view(tok.data(), tok.size());
  hr.body = req.body();
  hr.arrival_ns = arrival_ns;
  return hr;
}

Response hook_response(const Request& req, const HookReply& r) {
  Response res{static_cast<http::status>(r.status), req.version()};
  res.set(http::field::server, "tocsin-collector/" TOCSIN_VERSION);
  res.set(http::field::content_type, "application/json");
  if (r.challenge) res.set(http::field::www_authenticate, "Bearer");
  res.keep_alive(req.keep_alive());
  res.body() = r.body;
  res.prepare_payload();
  return res;
}

// Alerts are answered only once the correlator has stored them, so a sender that gets 200
// can forget the alert. The correlator completes on its own thread; a timer set to "never"
// serves as the condition variable the answer is posted to.
awaitable<Response> handle_hook(State& st, const Request& req, std::int64_t arrival_ns) {
  HookRequest hr = hook_request(req, arrival_ns);
  auto reply_of = [&req](const HookReply& r) { return hook_response(req, r); };
  if (req.method() != http::verb::post) {
    auto res = error_response(http::status::method_not_allowed,
                                      "alert endpoints only accept POST", &req);
    res.set(http::field::allow, "POST");
    co_return res;
  }
  auto prepared = prepare_hook(*st.alerting.sources, hr, *st.alerting.correlator);
  if (auto* refused = std::get_if<HookReply>(&prepared)) co_return reply_of(*refused);
  auto& accepted = std::get<HookAccepted>(prepared);
  auto ex = co_await asio::this_coro::executor;
  auto wake =
      std::make_shared<asio::steady_timer>(ex, std::chrono::steady_clock::time_point::max());
  auto outcome = std::make_shared<SubmitOutcome>();
  st.alerting.correlator->submit(std::move(accepted.alerts), [wake, outcome, ex](SubmitOutcome o) {
    asio::post(ex, [wake, outcome, o = std::move(o)] {
      *outcome = o;
      wake->cancel();
    });
  });
  boost::system::error_code ec;
  co_await wake->async_wait(asio::redirect_error(use_awaitable, ec));
  co_return reply_of(hook_reply(*accepted.source, *outcome));
}

}  // namespace tocsin::collector::detail::api
