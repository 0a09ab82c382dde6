// grpcpp.cc — the adapter's pipeline threads and the untyped half of a stream
// (bidistream/grpcpp.h says what each does for a user).
//
// A Loop is one pipeline thread: a bds_pipeline, an inbox that any thread
// posts to (a mutex, a vector swapped out whole, a condition variable to wake
// the thread) and a timer map for Runtime::After. The inbox carries the
// pipelines' own messages (the port's post: calls and replies crossing
// between pipelines) and gRPC's reactions for the streams at home here, in
// the order they were posted, so a stream's events reach it in gRPC's order.
//
// A stream is freed by its home thread once four things are over: gRPC's
// RPC (OnDone), the session (released), every payload the pipeline holds and
// every reply handed to us (held_), and the read and write in flight. The
// session is released in ops->closed, as bidistreamd does; payloads and
// replies may still come back after that (a handler finishing late), which
// is why held_ and not the session decides.
#include "bidistream/grpcpp.h"

#include <time.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

namespace bidistream {
namespace grpcpp {

void Misuse(const char *api, const char *what) {
  std::fprintf(stderr, "bidistream: %s: misuse: %s\n", api, what);
  std::fflush(stderr);
  std::abort();
}

namespace detail {

enum StreamEvent { kStart, kReadDone, kWriteDone, kCancel, kDone };

static uint64_t MonoNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

// A timer's cancel check runs this often while it waits (Runtime::After).
constexpr uint64_t kSweepNs = 10 * 1000 * 1000;
// bds_pipeline_run's budget per turn: the inbox is looked at in between.
constexpr uint32_t kRunBudget = 1024;

class Loop {
 public:
  struct Ev {
    enum Kind : uint8_t { kDeliver, kStream, kShutdown, kStop } kind;
    uint8_t sub;
    bool ok;
    void *p;
  };

  Loop(Runtime *rt, uint32_t index) : rt_(rt), index_(index) {}

  // Starts the thread and waits until its pipeline exists.
  bds_status Start(uint32_t count, const uint64_t seed[2]) {
    std::unique_lock<std::mutex> lk(mu_);
    th_ = std::thread([this, count, s0 = seed[0], s1 = seed[1]] { Main(count, s0, s1); });
    cv_.wait(lk, [this] { return ready_; });
    return create_status_;
  }

  void Post(Ev ev) {
    bool wake;
    {
      std::lock_guard<std::mutex> g(mu_);
      inbox_.push_back(ev);
      wake = sleeping_;
    }
    if (wake) cv_.notify_one();
  }

  void Join() {
    if (th_.joinable()) th_.join();
  }

  bds_pipeline *pipeline() const { return p_; }

  void AddTimer(bds_call *call, uint64_t due_ns, std::function<void(bool)> fn) {
    timers_.emplace(due_ns, Timer{call, std::move(fn)});
  }

  StreamBase *streams_ = nullptr;  // live streams at home here (their prev_/next_)

 private:
  struct Timer {
    bds_call *call;
    std::function<void(bool)> fn;
  };

  static uint64_t PortNow(void *) { return MonoNs(); }
  static void PortPost(uint32_t dst, void *msg, void *ctx) {
    static_cast<Runtime *>(ctx)->loops_[dst]->Post(Ev{Ev::kDeliver, 0, false, msg});
  }

  void Main(uint32_t count, uint64_t s0, uint64_t s1) {
    tl_loop = this;
    bds_pipeline_config pc;
    bds_pipeline_config_default(&pc);
    pc.index = index_;
    pc.count = count;
    pc.seed[0] = s0;
    pc.seed[1] = s1;
    pc.port.now_ns = PortNow;
    pc.port.post = PortPost;
    pc.port.ctx = rt_;
    bds_status st = bds_pipeline_create(&p_, &pc);
    {
      std::lock_guard<std::mutex> g(mu_);
      create_status_ = st;
      ready_ = true;
    }
    cv_.notify_all();
    if (st != BDS_OK) return;
    Run();
    bds_pipeline_destroy(p_);
    p_ = nullptr;
  }

  void Run() {
    std::vector<Ev> batch;
    bool stop = false;
    for (;;) {
      {
        std::lock_guard<std::mutex> g(mu_);
        batch.swap(inbox_);
      }
      for (const Ev &ev : batch) {
        switch (ev.kind) {
          case Ev::kDeliver: bds_pipeline_deliver(p_, ev.p); break;
          case Ev::kStream: static_cast<StreamBase *>(ev.p)->OnEvent(ev.sub, ev.ok); break;
          case Ev::kShutdown:
            for (StreamBase *s = streams_; s; s = s->next_) s->OnShutdown();
            break;
          case Ev::kStop: stop = true; break;
        }
      }
      batch.clear();
      RunTimers();
      if (bds_pipeline_run(p_, kRunBudget) == kRunBudget) continue;
      std::unique_lock<std::mutex> lk(mu_);
      if (!inbox_.empty() || bds_pipeline_has_work(p_)) continue;
      if (stop) {
        if (streams_ || !timers_.empty())
          Misuse("Runtime::Stop", "streams or Runtime::After timers are still live (wait for Runtime::Wait)");
        return;
      }
      uint64_t due = bds_pipeline_next_deadline(p_);
      if (!timers_.empty()) due = std::min(due, std::min(timers_.begin()->first, MonoNs() + kSweepNs));
      sleeping_ = true;
      if (due == UINT64_MAX) {
        cv_.wait(lk, [this] { return !inbox_.empty(); });
      } else {
        uint64_t now = MonoNs();
        if (due > now)
          cv_.wait_for(lk, std::chrono::nanoseconds(due - now), [this] { return !inbox_.empty(); });
      }
      sleeping_ = false;
    }
  }

  // Fires the timers that are due, and early those whose stream is over.
  void RunTimers() {
    if (timers_.empty()) return;
    uint64_t now = MonoNs();
    bool sweep = now >= next_sweep_;
    if (sweep) next_sweep_ = now + kSweepNs;
    std::vector<std::pair<std::function<void(bool)>, bool>> fire;
    for (auto it = timers_.begin(); it != timers_.end();) {
      bool due = it->first <= now;
      if (!due && !sweep) break;
      bool cancelled = !due && it->second.call && bds_call_cancelled(it->second.call);
      if (due || cancelled) {
        fire.emplace_back(std::move(it->second.fn), cancelled);
        it = timers_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto &f : fire) f.first(f.second);
  }

  Runtime *rt_;
  uint32_t index_;
  bds_pipeline *p_ = nullptr;
  std::thread th_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Ev> inbox_;
  bool sleeping_ = false, ready_ = false;
  bds_status create_status_ = BDS_OK;
  std::multimap<uint64_t, Timer> timers_;
  uint64_t next_sweep_ = 0;

 public:
  static thread_local Loop *tl_loop;
};

thread_local Loop *Loop::tl_loop = nullptr;

// ---- streams ------------------------------------------------------------------------

struct SessionOps {
  static void Write(bds_session *, bds_reply *r, void *ctx) { static_cast<StreamBase *>(ctx)->Write(r); }
  static void Drop(bds_session *, bds_reply *r, void *ctx) { static_cast<StreamBase *>(ctx)->Drop(r); }
  static void Release(bds_session *, void *payload, void *ctx) { static_cast<StreamBase *>(ctx)->Release(payload); }
  static void Closed(bds_session *, bds_status st, const char *msg, void *ctx) {
    static_cast<StreamBase *>(ctx)->Closed(st, msg);
  }
  static void InboundReady(bds_session *, void *ctx) { static_cast<StreamBase *>(ctx)->InboundReady(); }
  static const bds_session_ops ops;
};

const bds_session_ops SessionOps::ops = {Write, Drop, Release, Closed, InboundReady};

StreamBase::StreamBase(MethodBase *m, grpc::CallbackServerContext *ctx)
    : m_(m), home_(m->rt->NextHome()), deadline_(ctx->deadline()) {
  m_->live.fetch_add(1, std::memory_order_acq_rel);
  m_->rt->StreamStarted();
}

StreamBase::~StreamBase() = default;

void StreamBase::PostStart() { home_->Post({Loop::Ev::kStream, kStart, true, this}); }
void StreamBase::PostReadDone(bool ok) { home_->Post({Loop::Ev::kStream, kReadDone, ok, this}); }
void StreamBase::PostWriteDone(bool ok) { home_->Post({Loop::Ev::kStream, kWriteDone, ok, this}); }
void StreamBase::PostCancel() { home_->Post({Loop::Ev::kStream, kCancel, false, this}); }
void StreamBase::PostDone() { home_->Post({Loop::Ev::kStream, kDone, true, this}); }

static grpc::Status StatusOf(bds_status st, const char *message) {
  if (st == BDS_OK) return grpc::Status::OK;
  int code = bds_status_grpc(st);
  // Nothing goes to the client (it cancelled): gRPC still wants a Finish.
  if (code < 0) code = grpc::StatusCode::CANCELLED;
  return grpc::Status(static_cast<grpc::StatusCode>(code), message ? message : bds_status_str(st));
}

void StreamBase::OnEvent(int kind, bool ok) {
  switch (kind) {
    case kStart: {
      next_ = home_->streams_;
      if (next_) next_->prev_ = this;
      home_->streams_ = this;
      const char *why = nullptr;
      bds_status st = BDS_E_SHUTDOWN;
      if (!m_->rt->shutting_down_.load(std::memory_order_acquire)) {
        bds_session_config sc;
        bds_session_config_default(&sc);
        sc.options = &m_->options;
        sc.handler = m_->handler;
        sc.handler_ctx = m_->handler_ctx;
        sc.ops = &SessionOps::ops;
        sc.ops_ctx = this;
        st = bds_session_create(&session_, home_->pipeline(), &sc, &why);
        if (st == BDS_OK) st = bds_session_open(session_);
      }
      if (st != BDS_OK) {
        if (session_) bds_session_release(session_);
        session_ = nullptr;
        released_ = true;
        fin_ = StatusOf(st, why);
        finish_wanted_ = true;
        MaybeFinish();
        return;
      }
      if (deadline_ != std::chrono::system_clock::time_point::max()) {
        auto left = deadline_ - std::chrono::system_clock::now();
        int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
        bds_session_set_deadline(session_, MonoNs() + static_cast<uint64_t>(ns > 0 ? ns : 1));
      }
      MaybeRead();
      return;
    }
    case kReadDone: {
      void *in = reading_;
      reading_ = nullptr;
      if (released_ || !ok) {
        InFree(in);
        if (!ok) read_over_ = true;
        if (!ok && !released_) bds_session_client_close(session_);
        MaybeFree();
        return;
      }
      const void *key;
      uint32_t key_len, bytes;
      std::string err;
      if (!ReadKey(in, &key, &key_len, &bytes, &err)) {
        // Malformed input ends its stream with a clear error; the server
        // goes on serving the others.
        InFree(in);
        read_over_ = true;
        bds_session_fail(session_, BDS_INTERNAL, err.c_str());
        return;
      }
      held_++;
      if (bds_session_receive(session_, in, bytes, key, key_len, ++seq_) != BDS_OK) {
        // Refused (the session is closing or closed, e.g. a rejected
        // admission): the payload is still ours, and no more reads.
        held_--;
        InFree(in);
        read_over_ = true;
        return;
      }
      MaybeRead();
      return;
    }
    case kWriteDone: {
      bds_reply *r = writing_;
      writing_ = nullptr;
      if (!released_) bds_session_reply_written(session_, r);
      OutFree(r);
      held_--;
      if (!ok) write_broken_ = true;  // the RPC is over; OnCancel or OnDone follows
      NextWrite();
      MaybeFinish();
      MaybeFree();
      return;
    }
    case kCancel:
      write_broken_ = true;
      if (!released_) bds_session_cancel(session_);
      NextWrite();
      MaybeFinish();
      return;
    case kDone:
      grpc_done_ = true;
      if (!released_) {  // gRPC ended it without our Finish: not expected, but free what we hold
        released_ = true;
        bds_session_release(session_);
      }
      write_broken_ = true;
      NextWrite();
      MaybeFree();
      return;
  }
}

void StreamBase::OnShutdown() {
  if (!released_ && session_) bds_session_shutdown(session_);
}

void StreamBase::MaybeRead() {
  if (reading_ || read_over_ || released_ || finish_wanted_) return;
  const bds_options &o = m_->options;
  // HARD_REJECT reads on, so that a message over capacity is refused
  // (RESOURCE_EXHAUSTED) rather than left waiting in gRPC's flow control.
  if (o.inbound.backpressure.policy != BDS_BP_HARD_REJECT && bds_session_inbound_room(session_) == 0) {
    read_wanted_ = true;
    return;
  }
  read_wanted_ = false;
  reading_ = ReadStart();
}

void StreamBase::InboundReady() {
  if (read_wanted_) MaybeRead();
}

void StreamBase::Write(bds_reply *reply) {
  held_++;
  reply->_next = nullptr;
  if (wq_tail_) wq_tail_->_next = reply;
  else wq_head_ = reply;
  wq_tail_ = reply;
  NextWrite();
}

// Starts the next queued reply unless one is in flight; once the RPC is
// broken or finished, queued replies are given back instead.
void StreamBase::NextWrite() {
  if (writing_) return;
  while (wq_head_ && (write_broken_ || finished_ || (released_ && !drain_writes_))) {
    bds_reply *r = wq_head_;
    wq_head_ = r->_next;
    if (!wq_head_) wq_tail_ = nullptr;
    if (!released_) bds_session_reply_written(session_, r);
    OutFree(r);
    held_--;
  }
  if (!wq_head_) {
    wq_tail_ = nullptr;
    return;
  }
  writing_ = wq_head_;
  wq_head_ = writing_->_next;
  if (!wq_head_) wq_tail_ = nullptr;
  WriteStart(writing_, wq_head_ != nullptr);
}

// A reply that never reached Write: it was not counted.
void StreamBase::Drop(bds_reply *reply) { OutFree(reply); }

void StreamBase::Release(void *payload) {
  InFree(payload);
  held_--;
  MaybeFree();
}

void StreamBase::Closed(bds_status status, const char *message) {
  fin_ = StatusOf(status, message);
  // The replies the Sender handed over leave first, then the status, as
  // they do in bidistreamd (there they are in the HTTP/2 stream already):
  // a reply made before a failure reaches the client. Not when nothing is
  // sent (the client is gone); the options bound how many wait here.
  drain_writes_ = bds_status_grpc(status) >= 0;
  finish_wanted_ = true;
  released_ = true;
  bds_session *s = session_;
  session_ = nullptr;
  bds_session_release(s);
  NextWrite();
  MaybeFinish();
  MaybeFree();
}

void StreamBase::MaybeFinish() {
  if (!finish_wanted_ || finished_ || writing_ || wq_head_) return;
  finished_ = true;
  FinishRpc(fin_);
}

void StreamBase::MaybeFree() {
  if (!grpc_done_ || !released_ || writing_ || reading_ || held_ != 0) return;
  if (prev_) prev_->next_ = next_;
  else home_->streams_ = next_;
  if (next_) next_->prev_ = prev_;
  MethodBase *m = m_;
  delete this;
  m->live.fetch_sub(1, std::memory_order_acq_rel);
  m->rt->StreamFreed();
}

}  // namespace detail

// ---- the runtime --------------------------------------------------------------------

Runtime::Runtime() = default;

Runtime::~Runtime() { Stop(); }

bds_status Runtime::Start(uint32_t threads, const char **why) {
  const char *w = nullptr;
  if (loops_) w = "Runtime::Start: started already";
  else if (threads == 0 || threads > 64) w = "Runtime::Start: threads must be 1..64";
  if (w) {
    if (why) *why = w;
    return BDS_E_INVALID;
  }
  // One seed for every pipeline, so that a key hashes to the same one
  // wherever it is asked; random, so that a client cannot aim at a thread.
  std::random_device rd;
  uint64_t seed[2];
  for (uint64_t &s : seed) s = (static_cast<uint64_t>(rd()) << 32 | rd()) | 1;
  loops_ = new (std::nothrow) detail::Loop *[threads]();
  if (!loops_) {
    if (why) *why = "Runtime::Start: out of memory";
    return BDS_E_NOMEM;
  }
  n_loops_ = threads;
  for (uint32_t i = 0; i < threads; i++) loops_[i] = new detail::Loop(this, i);
  // Every loop exists before any thread runs: a pipeline may post to any.
  bds_status st = BDS_OK;
  uint32_t started = 0;
  for (; started < threads && st == BDS_OK; started++) st = loops_[started]->Start(threads, seed);
  if (st != BDS_OK) {
    for (uint32_t i = 0; i < started; i++) {
      loops_[i]->Post({detail::Loop::Ev::kStop, 0, false, nullptr});
      loops_[i]->Join();
    }
    for (uint32_t i = 0; i < threads; i++) delete loops_[i];
    delete[] loops_;
    loops_ = nullptr;
    n_loops_ = 0;
    if (why) *why = "Runtime::Start: a pipeline could not be created";
  }
  return st;
}

detail::Loop *Runtime::NextHome() {
  if (!loops_) Misuse("BidiMethod::Start", "the runtime is not started");
  return loops_[next_home_.fetch_add(1, std::memory_order_relaxed) % n_loops_];
}

void Runtime::StreamFreed() { live_.fetch_sub(1, std::memory_order_acq_rel); }

void Runtime::Shutdown() {
  if (shutting_down_.exchange(true, std::memory_order_acq_rel)) return;
  for (uint32_t i = 0; i < n_loops_; i++) loops_[i]->Post({detail::Loop::Ev::kShutdown, 0, false, nullptr});
}

bool Runtime::Wait(std::chrono::steady_clock::time_point deadline) {
  if (detail::Loop::tl_loop) Misuse("Runtime::Wait", "called on a pipeline thread (it would wait for itself)");
  while (live_.load(std::memory_order_acquire) != 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

void Runtime::Stop() {
  if (stopped_ || !loops_) return;
  if (detail::Loop::tl_loop) Misuse("Runtime::Stop", "called on a pipeline thread");
  if (live_.load(std::memory_order_acquire) != 0)
    Misuse("Runtime::Stop", "streams are still live (wait for Runtime::Wait)");
  stopped_ = true;
  for (uint32_t i = 0; i < n_loops_; i++) loops_[i]->Post({detail::Loop::Ev::kStop, 0, false, nullptr});
  for (uint32_t i = 0; i < n_loops_; i++) loops_[i]->Join();
  for (uint32_t i = 0; i < n_loops_; i++) delete loops_[i];
  delete[] loops_;
  loops_ = nullptr;
}

void Runtime::After(bds_call *call, std::chrono::nanoseconds delay, std::function<void(bool)> fn) {
  detail::Loop *l = detail::Loop::tl_loop;
  bool mine = false;
  for (uint32_t i = 0; l && i < n_loops_; i++) mine |= loops_[i] == l;
  if (!mine) Misuse("Runtime::After", "not on a pipeline thread of this runtime");
  int64_t ns = delay.count();
  l->AddTimer(call, detail::MonoNs() + static_cast<uint64_t>(ns > 0 ? ns : 0), std::move(fn));
}

}  // namespace grpcpp
}  // namespace bidistream
