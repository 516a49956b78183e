#include "agent/runtime/outbox.hpp"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "common/clock.hpp"
#include "common/file_io.hpp"

namespace tocsin::agent {
namespace fs = std::filesystem;
namespace fio = common::file_io;

namespace {

constexpr std::size_t kHeader = 4 + 8 + 32 + 32;  // len, seq, prev, hash
// A record must fit in one batch frame with room to spare for the batch's own fields.
constexpr std::uint32_t kMaxRecord = common::kMaxFrameBytes - 64 * 1024;

[[noreturn]] void sys_fail(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}

void put_u32(std::string& s, std::uint32_t v) {
  for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_u64(std::string& s, std::uint64_t v) {
  for (int i = 7; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
std::uint64_t get_be(const char* p, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

std::string segment_name(std::uint64_t first_seq) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "seg-%020llu.log", static_cast<unsigned long long>(first_seq));
  return buf;
}

void pread_all(int fd, char* buf, std::size_t n, std::uint64_t off, const fs::path& p) {
  while (n > 0) {
    auto r = fio::pread(fd, buf, n, off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) sys_fail("reading outbox segment " + p.string());
    buf += r;
    n -= static_cast<std::size_t>(r);
    off += static_cast<std::uint64_t>(r);
  }
}

void fsync_dir(const fs::path& dir) { fio::sync_dir(dir); }

}  // namespace

Outbox::Outbox(OutboxOptions opts, std::string agent_id)
    : opts_(std::move(opts)), agent_id_(std::move(agent_id)) {}

Outbox::~Outbox() {
  if (fd_ >= 0) fio::close(fd_);
}

std::unique_ptr<Outbox> Outbox::open(const OutboxOptions& opts, const std::string& agent_id) {
  if (opts.read_only) {
    std::unique_ptr<Outbox> ob(new Outbox(opts, agent_id));
    if (fs::exists(opts.dir)) ob->load();  // else: nothing was ever written
    return ob;
  }
  fio::make_private_dir(opts.dir);
  auto owner_file = opts.dir / "agent_id";
  if (fs::exists(owner_file)) {
    auto owner = common::read_file(owner_file, 256);
    while (!owner.empty() && (owner.back() == '\n' || owner.back() == ' ')) owner.pop_back();
    if (owner != agent_id) {
      // Results chained for another identity can never verify under this one: keep them
      // aside for inspection rather than deleting or sending them.
      auto aside = opts.dir;
      aside += ".orphaned-" + owner + "-" + std::to_string(common::now_ns());
      spdlog::warn("outbox {} belongs to agent {}, not {}; moving it to {}", opts.dir.string(),
                   owner, agent_id, aside.string());
      fs::rename(opts.dir, aside);
      fio::make_private_dir(opts.dir);
    }
  }
  if (!fs::exists(owner_file)) common::write_file_atomic(owner_file, agent_id + "\n");
  std::unique_ptr<Outbox> ob(new Outbox(opts, agent_id));
  ob->load();
  return ob;
}

void Outbox::load() {
  if (fs::exists(opts_.dir / "acked")) {
    // "<seq> <hash>": the head survives even when every segment holding it was removed.
    auto text = common::read_file(opts_.dir / "acked", 128);
    auto space = text.find(' ');
    acked_seq_ = std::stoull(text.substr(0, space));
    if (space == std::string::npos || !common::from_hex(text.substr(space + 1, 64), acked_hash_))
      throw std::runtime_error("outbox marker " + (opts_.dir / "acked").string() + " is corrupt");
    head_seq_ = acked_seq_;
    head_hash_ = acked_hash_;
  }
  if (fs::exists(opts_.dir / "dropped")) {
    auto text = common::read_file(opts_.dir / "dropped", 128);
    unsigned long long total = 0, unreported = 0;
    long long first = 0, last = 0;
    std::sscanf(text.c_str(), "%llu %llu %lld %lld", &total, &unreported, &first, &last);
    dropped_total_ = total;
    dropped_unreported_ = unreported;
    first_drop_ns_ = first;
    last_drop_ns_ = last;
  }
  for (auto& e : fs::directory_iterator(opts_.dir)) {
    auto name = e.path().filename().string();
    if (name.size() == 28 && name.starts_with("seg-") && name.ends_with(".log")) {
      auto first = std::stoull(name.substr(4, 20));
      segments_[first] = Segment{first, e.path()};
    }
  }
  for (auto it = segments_.begin(); it != segments_.end(); ++it)
    load_segment(it->second, std::next(it) == segments_.end());
  if (opts_.read_only) return;
  open_current();
  drop_acked_segments();
}

void Outbox::load_segment(Segment& seg, bool is_last) {
  int fd = fio::open(seg.path, opts_.read_only ? fio::Mode::read : fio::Mode::read_write);
  if (fd < 0) sys_fail("opening " + seg.path.string());
  std::uint64_t size = 0, off = 0;
  fio::size(fd, size);
  std::string rec;
  auto torn = [&](const std::string& why) {
    if (opts_.read_only) {  // a running agent may be appending right now: just stop reading
      size = off;
      return;
    }
    if (!is_last) {
      fio::close(fd);
      throw std::runtime_error("outbox segment " + seg.path.string() + " is corrupt at offset " +
                               std::to_string(off) + ": " + why);
    }
    spdlog::warn("outbox: truncating a torn record at {}:{} ({}); it was never sent",
                 seg.path.string(), off, why);
    if (fio::truncate(fd, off) != 0) sys_fail("truncating " + seg.path.string());
    fio::sync(fd);
    size = off;
  };
  while (off < size) {
    if (size - off < kHeader) {
      torn("short header");
      break;
    }
    char hdr[kHeader];
    pread_all(fd, hdr, kHeader, off, seg.path);
    auto len = static_cast<std::uint32_t>(get_be(hdr, 4));
    if (len < kHeader || len > kMaxRecord || off + len > size) {
      torn("bad length");
      break;
    }
    rec.resize(len);
    pread_all(fd, rec.data(), len, off, seg.path);
    common::ResultRecord r;
    r.agent_id = agent_id_;
    r.seq = get_be(rec.data() + 4, 8);
    std::memcpy(r.prev_hash.data(), rec.data() + 12, 32);
    std::memcpy(r.hash.data(), rec.data() + 44, 32);
    r.body.assign(rec.data() + kHeader, len - kHeader);
    if (common::compute_result_hash(agent_id_, r.seq, r.prev_hash, r.body) != r.hash) {
      torn("record does not match its hash");
      break;
    }
    if (r.seq <= acked_seq_) {  // already acked; kept only until its segment is removed
      seg.last_seq = r.seq;
      off += len;
      continue;
    }
    if (r.seq != head_seq_ + 1 || r.prev_hash != head_hash_) {
      torn("record does not chain to seq " + std::to_string(head_seq_));
      break;
    }
    head_seq_ = r.seq;
    head_hash_ = r.hash;
    seg.last_seq = r.seq;
    index_.push_back({r.seq, seg.first_seq, off, len});
    pending_bytes_ += len;
    off += len;
  }
  seg.size = size;
  fio::close(fd);
}

void Outbox::open_current() {
  if (segments_.empty()) {
    auto first = head_seq_ + 1;
    segments_[first] = Segment{first, opts_.dir / segment_name(first)};
  }
  auto& cur = segments_.rbegin()->second;
  fd_ = fio::open(cur.path, fio::Mode::append, fio::kOwnerOnly);
  if (fd_ < 0) sys_fail("opening " + cur.path.string());
  fsync_dir(opts_.dir);
}

void Outbox::roll_segment() {
  fio::close(fd_);
  fd_ = -1;
  auto first = head_seq_ + 1;
  segments_[first] = Segment{first, opts_.dir / segment_name(first)};
  open_current();
}

bool Outbox::append_one(const std::string& body, std::string& buf) {
  std::uint32_t len = static_cast<std::uint32_t>(kHeader + body.size());
  if (len > kMaxRecord) throw std::length_error("result body too large for the outbox");
  if (pending_bytes_ + len > opts_.max_bytes) return false;
  auto seq = head_seq_ + 1;
  auto hash = common::compute_result_hash(agent_id_, seq, head_hash_, body);
  auto& cur = segments_.rbegin()->second;
  index_.push_back({seq, cur.first_seq, cur.size + buf.size(), len});
  put_u32(buf, len);
  put_u64(buf, seq);
  buf.append(reinterpret_cast<const char*>(head_hash_.data()), 32);
  buf.append(reinterpret_cast<const char*>(hash.data()), 32);
  buf.append(body);
  head_seq_ = seq;
  head_hash_ = hash;
  cur.last_seq = seq;
  pending_bytes_ += len;
  return true;
}

std::string Outbox::overflow_body() {
  common::ResultBody b;
  b.kind = "outbox_overflow";
  b.verdict = "error";
  b.reason = "outbox_full";
  b.evidence = {{"dropped", std::to_string(dropped_unreported_)},
                {"dropped_total", std::to_string(dropped_total_)},
                {"max_bytes", std::to_string(opts_.max_bytes)},
                {"first_dropped_at", common::format_time(first_drop_ns_)},
                {"last_dropped_at", common::format_time(last_drop_ns_)}};
  b.started_ns = first_drop_ns_;
  b.finished_ns = last_drop_ns_;
  return common::encode_body(b);
}

void Outbox::report_overflow_if_room(std::string& buf) {
  if (dropped_unreported_ == 0) return;
  // The loss is reported in order, as a result of its own, as soon as it fits.
  auto report = overflow_body();
  if (pending_bytes_ + kHeader + report.size() > opts_.max_bytes) return;
  append_one(report, buf);
  reporting_ = dropped_unreported_;  // cleared by flush() once the report is durable
}

void Outbox::flush(const std::string& buf) {
  if (!buf.empty()) {
    auto& cur = segments_.rbegin()->second;
    std::size_t off = 0;
    try {
      while (off < buf.size()) {
        auto n = fio::write(fd_, buf.data() + off, buf.size() - off);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) sys_fail("appending to the outbox");
        off += static_cast<std::size_t>(n);
      }
      if (fio::sync_data(fd_) != 0) sys_fail("syncing the outbox");
    } catch (...) {
      // Nothing of this append counts: cut the file back and forget the records in memory,
      // so the chain in memory is always the chain on disk.
      if (fio::truncate(fd_, cur.size) != 0)
        spdlog::error("outbox: could not truncate {} after a failed append", cur.path.string());
      while (!index_.empty() && index_.back().segment == cur.first_seq &&
             index_.back().offset >= cur.size) {
        pending_bytes_ -= index_.back().size;
        index_.pop_back();
      }
      head_seq_ = index_.empty() ? acked_seq_ : index_.back().seq;
      head_hash_ = index_.empty() ? acked_hash_ : read_record(index_.back()).hash;
      cur.last_seq = std::min(cur.last_seq, head_seq_);
      reporting_ = 0;  // the report was not written: it stays owed
      throw;
    }
    cur.size += buf.size();
  }
  if (reporting_) {
    spdlog::info("outbox has room again: reported {} results dropped while it was full",
                 reporting_);
    dropped_unreported_ -= reporting_;
    reporting_ = 0;
    counters_dirty_ = true;
  }
  if (counters_dirty_) {
    common::write_file_atomic(opts_.dir / "dropped",
                              std::to_string(dropped_total_) + " " +
                                  std::to_string(dropped_unreported_) + " " +
                                  std::to_string(first_drop_ns_) + " " +
                                  std::to_string(last_drop_ns_) + "\n");
    counters_dirty_ = false;
  }
}

std::size_t Outbox::append(const std::vector<std::string>& bodies) {
  if (opts_.read_only) throw std::logic_error("outbox opened read-only");
  for (const auto& body : bodies)  // refuse before anything changes
    if (kHeader + body.size() > kMaxRecord)
      throw std::length_error("a result body of " + std::to_string(body.size()) +
                              " bytes exceeds the outbox record cap");
  if (segments_.rbegin()->second.size >= opts_.segment_bytes) roll_segment();
  std::string buf;
  std::size_t appended = 0;
  report_overflow_if_room(buf);
  for (const auto& body : bodies) {
    if (dropped_unreported_ == reporting_ && append_one(body, buf)) {
      ++appended;
      continue;
    }
    auto now = common::frame_now_ns();  // the frame every result is stamped in
    if (dropped_unreported_ == reporting_) first_drop_ns_ = now;
    last_drop_ns_ = now;
    ++dropped_unreported_;
    ++dropped_total_;
    counters_dirty_ = true;
  }
  if (appended < bodies.size())
    spdlog::warn("outbox full ({} bytes unacked, cap {}): {} results dropped since it filled",
                 pending_bytes_, opts_.max_bytes, dropped_unreported_);
  flush(buf);
  return appended;
}

common::ResultRecord Outbox::read_record(const Index& ix) const {
  const auto& seg = segments_.at(ix.segment);
  int fd = fio::open(seg.path, fio::Mode::read);
  if (fd < 0) sys_fail("opening " + seg.path.string());
  std::string rec(ix.size, '\0');
  try {
    pread_all(fd, rec.data(), ix.size, ix.offset, seg.path);
  } catch (...) {
    fio::close(fd);
    throw;
  }
  fio::close(fd);
  common::ResultRecord r;
  r.agent_id = agent_id_;
  r.seq = get_be(rec.data() + 4, 8);
  std::memcpy(r.prev_hash.data(), rec.data() + 12, 32);
  std::memcpy(r.hash.data(), rec.data() + 44, 32);
  r.body = rec.substr(kHeader);
  if (r.seq != ix.seq) throw std::runtime_error("outbox index out of step at seq " + std::to_string(ix.seq));
  return r;
}

std::vector<common::ResultRecord> Outbox::pending(std::size_t max_count,
                                                  std::size_t max_bytes) const {
  std::vector<common::ResultRecord> out;
  std::size_t bytes = 0;
  for (const auto& ix : index_) {
    if (out.size() >= max_count || (bytes > 0 && bytes + ix.size > max_bytes)) break;
    out.push_back(read_record(ix));
    bytes += ix.size;
  }
  return out;
}

void Outbox::ack(std::uint64_t seq) {
  if (opts_.read_only) throw std::logic_error("outbox opened read-only");
  if (seq <= acked_seq_) return;
  if (seq > head_seq_)
    throw std::runtime_error("collector acked seq " + std::to_string(seq) +
                             " beyond the outbox head " + std::to_string(head_seq_));
  common::Digest hash = head_hash_;
  while (!index_.empty() && index_.front().seq <= seq) {
    if (index_.front().seq == seq) hash = read_record(index_.front()).hash;
    pending_bytes_ -= index_.front().size;
    index_.pop_front();
  }
  acked_seq_ = seq;
  acked_hash_ = hash;
  write_acked();
  drop_acked_segments();
  std::string buf;
  report_overflow_if_room(buf);
  flush(buf);
}

void Outbox::write_acked() {
  common::write_file_atomic(opts_.dir / "acked",
                            std::to_string(acked_seq_) + " " + common::to_hex(acked_hash_) + "\n");
}

void Outbox::drop_acked_segments() {
  // Never the current segment: appends go there. The head itself is kept by the marker.
  while (segments_.size() > 1) {
    auto& oldest = segments_.begin()->second;
    if (oldest.last_seq > acked_seq_) break;  // an empty old segment has last_seq 0
    fs::remove(oldest.path);
    segments_.erase(segments_.begin());
  }
}

std::string Outbox::reconcile(std::uint64_t collector_next_seq,
                              const common::Digest& collector_head) {
  if (opts_.read_only) throw std::logic_error("outbox opened read-only");
  if (collector_next_seq == 0) return "collector sent next seq 0, which is not valid";
  std::uint64_t stored = collector_next_seq - 1;  // the collector's last seq
  if (stored > head_seq_) {
    if (!index_.empty() || head_seq_ != acked_seq_)
      return "collector has seq " + std::to_string(stored) + " but this outbox ends at " +
             std::to_string(head_seq_) + " with unsent results";
    // Our state was lost (fresh state dir with an existing identity): continue the
    // collector's chain rather than fork it.
    spdlog::warn("outbox ends at seq {} but the collector has {}; continuing from the collector",
                 head_seq_, stored);
    head_seq_ = acked_seq_ = stored;
    head_hash_ = acked_hash_ = collector_head;
    write_acked();
    roll_segment();
    drop_acked_segments();
    return {};
  }
  if (stored < acked_seq_)
    return "collector reports seq " + std::to_string(stored) + " stored but it acked " +
           std::to_string(acked_seq_) + " before (was its database restored?)";
  if (stored == 0) return {};
  if (stored == head_seq_) {
    if (collector_head != head_hash_) return "collector chain head differs from the agent's";
  } else if (stored > acked_seq_) {
    auto it = std::find_if(index_.begin(), index_.end(),
                           [&](const Index& ix) { return ix.seq == stored; });
    if (it == index_.end() || read_record(*it).hash != collector_head)
      return "collector chain at seq " + std::to_string(stored) + " differs from the agent's";
  }
  ack(stored);
  return {};
}

OutboxStats Outbox::stats() const {
  return {head_seq_, acked_seq_, head_seq_ - acked_seq_, pending_bytes_, dropped_total_,
          dropped_unreported_};
}

}  // namespace tocsin::agent
