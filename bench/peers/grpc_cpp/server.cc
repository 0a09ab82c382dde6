// peer-grpc-cpp: the gRPC C++ peer of the benchmark suite (Debian libgrpc++ 1.51).
//
// Serves bidistream.v1.Pipeline/Process (docs/SERVICE.md) with one of the two server
// APIs a production C++ user would pick:
//   --api=callback  the callback (reactor) API: one ServerBidiReactor per stream;
//   --api=async     the completion-queue API: --threads CQs, one polling thread
//                   each, and a per-stream state machine driven by tags.
// Semantics match what bidistreamd promises, so the comparison is fair:
//   - each Frame is answered with the same key, seq and payload;
//   - keyed FIFO: frames of one key execute one after another (a per-key
//     queue), different keys in parallel, so same-key replies keep order;
//   - work_us > 0 delays the reply with a timer, never by sleeping on a
//     serving thread. gRPC's own Alarm rounds deadlines up to whole
//     milliseconds (grpc_timespec_to_millis_round_up), which would turn
//     work_us=100 into ~1 ms and make this peer look slow for a reason that
//     is not gRPC's serving path; so a small timer thread with a
//     nanosecond-deadline heap (condition_variable::wait_until) fires them;
//   - fail=true ends the stream with INTERNAL and a grpc-message;
//   - on client half-close every in-flight frame finishes and is answered,
//     then the stream ends with OK.
// Writes carry WriteOptions::set_buffer_hint() while more replies are queued
// behind them, so gRPC may coalesce them: this peer should be gRPC C++ at its
// reasonable best, not a strawman.
#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/resource_quota.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <sstream>
#include <functional>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "pipeline.grpc.pb.h"

using bidistream::v1::Frame;
using bidistream::v1::Pipeline;
using Clock = std::chrono::steady_clock;

namespace {

// ---- timer thread ------------------------------------------------------------
// One thread, a min-heap of deadlines. Callbacks run on this thread and must be
// short: they only hand the finished frame back to its stream.
class TimerThread {
 public:
  TimerThread() : th_([this] { Run(); }) {}
  ~TimerThread() {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    th_.join();
  }
  void After(uint32_t us, std::function<void()> fn) {
    Entry e{Clock::now() + std::chrono::microseconds(us), seq_++, std::move(fn)};
    bool wake;
    {
      std::lock_guard<std::mutex> g(mu_);
      wake = heap_.empty() || e.at < heap_.top().at;
      heap_.push(std::move(e));
    }
    if (wake) cv_.notify_one();
  }

 private:
  struct Entry {
    Clock::time_point at;
    uint64_t seq;  // ties fire in arming order
    std::function<void()> fn;
    bool operator>(const Entry& o) const { return at != o.at ? at > o.at : seq > o.seq; }
  };
  void Run() {
    std::unique_lock<std::mutex> lk(mu_);
    while (!stop_) {
      if (heap_.empty()) {
        cv_.wait(lk);
        continue;
      }
      auto at = heap_.top().at;
      if (Clock::now() < at) {
        cv_.wait_until(lk, at);
        continue;
      }
      auto fn = std::move(const_cast<Entry&>(heap_.top()).fn);
      heap_.pop();
      lk.unlock();
      fn();
      lk.lock();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap_;
  std::atomic<uint64_t> seq_{0};
  bool stop_ = false;
  std::thread th_;
};

TimerThread* g_timers;
bool g_buffer_hint = true;  // --no-buffer-hint turns it off, to measure its effect

Frame MakeReply(const Frame& in) {
  Frame r;
  r.set_key(in.key());
  r.set_seq(in.seq());
  r.set_payload(in.payload());
  return r;
}

grpc::Status FailStatus(const Frame& f) {
  return grpc::Status(grpc::StatusCode::INTERNAL,
                      "fail requested for seq " + std::to_string(f.seq()));
}

// ---- keyed FIFO, shared by both APIs -------------------------------------------
// Not thread-safe: the callback reactor holds its mutex, the async call runs on
// its one CQ thread.
struct KeyedFifo {
  // Key -> frames waiting behind the one executing. Present = key busy.
  std::unordered_map<std::string, std::deque<Frame>> busy;
  int inflight = 0;  // frames admitted and not yet replied to

  // Returns true when f must start now (its timer); false when it queued.
  // Frames without work and an idle key skip the table: reply at once.
  enum Admit { kReplyNow, kStart, kQueued };
  Admit Add(const Frame& f) {
    auto it = busy.find(f.key());
    if (it != busy.end()) {
      it->second.push_back(f);
      inflight++;
      return kQueued;
    }
    if (f.work_us() == 0) return kReplyNow;
    busy.emplace(f.key(), std::deque<Frame>());
    inflight++;
    return kStart;
  }
  // f's work is done: returns true and sets *next when the key has more.
  bool Done(const Frame& f, Frame* next) {
    inflight--;
    auto it = busy.find(f.key());
    if (it == busy.end()) return false;
    if (it->second.empty()) {
      busy.erase(it);
      return false;
    }
    *next = std::move(it->second.front());
    it->second.pop_front();
    return true;
  }
};

// ==== callback API ===============================================================
class CbStream final : public grpc::ServerBidiReactor<Frame, Frame> {
 public:
  CbStream() { StartRead(&in_); }

  void OnReadDone(bool ok) override {
    Actions a;
    {
      std::lock_guard<std::mutex> g(mu_);
      if (!ok) {
        client_done_ = true;
      } else if (!finishing_) {
        if (in_.fail()) {
          BeginFail(FailStatus(in_), &a);
        } else {
          Admit(in_, &a);
          a.read = true;
        }
      }
      Plan(&a);
    }
    Run(a);
  }

  void OnWriteDone(bool ok) override {
    Actions a;
    {
      std::lock_guard<std::mutex> g(mu_);
      writing_ = false;
      if (!ok) {  // the stream is gone; drop what is queued
        broken_ = true;
        out_.clear();
      }
      Plan(&a);
    }
    Run(a);
  }

  void OnDone() override {
    bool del;
    {
      std::lock_guard<std::mutex> g(mu_);
      done_ = true;
      del = timers_ == 0;
    }
    if (del) delete this;
  }

 private:
  struct Actions {
    bool read = false;
    bool write = false;
    bool hint = false;
    bool finish = false;
    grpc::Status status;
    std::vector<Frame> start;  // frames whose timers to arm, outside the lock
  };

  void Admit(const Frame& f, Actions* a) {
    switch (keys_.Add(f)) {
      case KeyedFifo::kReplyNow:
        out_.push_back(MakeReply(f));
        break;
      case KeyedFifo::kStart:
        timers_++;  // reserved now, so OnDone cannot delete us before Arm
        a->start.push_back(f);
        break;
      case KeyedFifo::kQueued:
        break;
    }
  }

  void BeginFail(grpc::Status st, Actions*) {
    finishing_ = true;
    fail_ = true;
    fail_status_ = std::move(st);
    out_.clear();
  }

  // Decides, under the lock, the next write and whether to finish. Only the
  // thread that flips writing_ to true calls StartWrite, so writes stay one at
  // a time; Finish is decided once (finish_sent_).
  void Plan(Actions* a) {
    if (!writing_ && !out_.empty() && !finish_sent_) {
      cur_ = std::move(out_.front());
      out_.pop_front();
      writing_ = true;
      a->write = true;
      a->hint = !out_.empty();
    }
    if (writing_ || finish_sent_) return;
    if (fail_ || (client_done_ && keys_.inflight == 0 && out_.empty())) {
      finish_sent_ = true;
      a->finish = true;
      a->status = fail_ ? fail_status_ : grpc::Status::OK;
    }
  }

  void Run(Actions& a) {
    for (auto& f : a.start) Arm(std::move(f));
    if (a.write) {
      grpc::WriteOptions wo;
      if (a.hint && g_buffer_hint) wo.set_buffer_hint();
      StartWrite(&cur_, wo);
    }
    if (a.read) StartRead(&in_);
    if (a.finish) Finish(a.status);
  }

  // timers_ was counted when f was put in Actions::start.
  void Arm(Frame f) {
    uint32_t us = f.work_us();
    g_timers->After(us, [this, fr = std::move(f)] { OnTimer(fr); });
  }

  void OnTimer(const Frame& f) {
    Actions a;
    bool del;
    {
      std::lock_guard<std::mutex> g(mu_);
      timers_--;
      if (!finishing_ && !broken_ && !done_) out_.push_back(MakeReply(f));
      Frame next;
      // Once the RPC is over the key's chain stops here.
      if (keys_.Done(f, &next) && !done_) {
        timers_++;
        a.start.push_back(std::move(next));
      }
      del = done_ && timers_ == 0;
      if (!done_) Plan(&a);
    }
    if (del) {
      delete this;
      return;
    }
    Run(a);
  }

  std::mutex mu_;
  Frame in_;                 // the one outstanding read's target
  Frame cur_;                // the one outstanding write's message
  std::deque<Frame> out_;    // replies waiting for the write slot
  KeyedFifo keys_;
  bool writing_ = false, client_done_ = false, finishing_ = false, fail_ = false;
  bool finish_sent_ = false, broken_ = false, done_ = false;
  int timers_ = 0;  // armed timers; the reactor outlives them
  grpc::Status fail_status_;
};

class CbService final : public Pipeline::CallbackService {
  grpc::ServerBidiReactor<Frame, Frame>* Process(grpc::CallbackServerContext*) override {
    return new CbStream();
  }
};

// ==== async (completion-queue) API ===============================================
class AsyncWorker;
class AsyncCall;

struct Tag {
  enum Kind { kAccept, kRead, kWrite, kFinish, kWake };
  AsyncCall* call;
  Kind kind;
};

class AsyncCall {
 public:
  AsyncCall(Pipeline::AsyncService* svc, grpc::ServerCompletionQueue* cq, AsyncWorker* w)
      : svc_(svc), cq_(cq), w_(w), rw_(&ctx_) {
    pending_++;
    svc_->RequestProcess(&ctx_, &rw_, cq_, cq_, &accept_tag_);
  }

  void OnEvent(Tag::Kind k, bool ok);
  void OnTimer(const Frame& f);

 private:
  void Admit(const Frame& f);
  void Arm(Frame f);
  void Pump();
  void MaybeDelete() {
    if (pending_ == 0 && timers_ == 0 && (finish_sent_ || !accepted_)) delete this;
  }

  Pipeline::AsyncService* svc_;
  grpc::ServerCompletionQueue* cq_;
  AsyncWorker* w_;
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReaderWriter<Frame, Frame> rw_;
  Tag accept_tag_{this, Tag::kAccept}, read_tag_{this, Tag::kRead};
  Tag write_tag_{this, Tag::kWrite}, finish_tag_{this, Tag::kFinish};
  Frame in_, cur_;
  std::deque<Frame> out_;
  KeyedFifo keys_;
  int pending_ = 0;  // outstanding ops on the CQ
  int timers_ = 0;
  bool accepted_ = false, writing_ = false, client_done_ = false, fail_ = false;
  bool finish_sent_ = false, broken_ = false;
  grpc::Status fail_status_;
};

// One CQ and the thread that polls it. Timers fire on the timer thread, which
// hands the frame over through ready_ and wakes the CQ with an immediate Alarm
// (the standard way to post to a CQ from outside).
class AsyncWorker {
 public:
  AsyncWorker(Pipeline::AsyncService* svc, std::unique_ptr<grpc::ServerCompletionQueue> cq)
      : svc_(svc), cq_(std::move(cq)) {}
  void Run() {
    // Enough posted accepts that a burst of new streams never waits on us.
    for (int i = 0; i < 16; i++) new AsyncCall(svc_, cq_.get(), this);
    void* t;
    bool ok;
    while (cq_->Next(&t, &ok)) {
      Tag* tag = static_cast<Tag*>(t);
      if (tag->kind == Tag::kWake) {
        std::vector<std::pair<AsyncCall*, Frame>> batch;
        {
          std::lock_guard<std::mutex> g(mu_);
          wake_armed_ = false;
          batch.swap(ready_);
        }
        for (auto& p : batch) p.first->OnTimer(p.second);
        continue;
      }
      tag->call->OnEvent(tag->kind, ok);
    }
  }
  void Ready(AsyncCall* c, Frame f) {  // timer thread
    std::lock_guard<std::mutex> g(mu_);
    ready_.emplace_back(c, std::move(f));
    if (!wake_armed_) {
      wake_armed_ = true;
      wake_.Set(cq_.get(), gpr_now(GPR_CLOCK_MONOTONIC), &wake_tag_);
    }
  }
  grpc::ServerCompletionQueue* cq() { return cq_.get(); }

 private:
  Pipeline::AsyncService* svc_;
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::mutex mu_;
  std::vector<std::pair<AsyncCall*, Frame>> ready_;
  bool wake_armed_ = false;
  grpc::Alarm wake_;  // re-armed only after its tag was delivered
  Tag wake_tag_{nullptr, Tag::kWake};
};

void AsyncCall::OnEvent(Tag::Kind k, bool ok) {
  pending_--;
  switch (k) {
    case Tag::kAccept:
      if (!ok) {  // server shutting down
        MaybeDelete();
        return;
      }
      accepted_ = true;
      new AsyncCall(svc_, cq_, w_);  // keep an accept posted
      pending_++;
      rw_.Read(&in_, &read_tag_);
      return;
    case Tag::kRead:
      if (!ok) {
        client_done_ = true;
      } else if (!finish_sent_ && !fail_) {
        if (in_.fail()) {
          fail_ = true;
          fail_status_ = FailStatus(in_);
          out_.clear();
        } else {
          Admit(in_);
          pending_++;
          rw_.Read(&in_, &read_tag_);
        }
      }
      break;
    case Tag::kWrite:
      writing_ = false;
      if (!ok) {
        broken_ = true;
        out_.clear();
      }
      break;
    case Tag::kFinish:
      break;
    case Tag::kWake:
      break;
  }
  Pump();
  MaybeDelete();
}

void AsyncCall::Admit(const Frame& f) {
  switch (keys_.Add(f)) {
    case KeyedFifo::kReplyNow:
      out_.push_back(MakeReply(f));
      break;
    case KeyedFifo::kStart:
      Arm(f);
      break;
    case KeyedFifo::kQueued:
      break;
  }
}

void AsyncCall::Arm(Frame f) {
  timers_++;
  uint32_t us = f.work_us();
  AsyncWorker* w = w_;
  g_timers->After(us, [w, this, fr = std::move(f)]() mutable { w->Ready(this, std::move(fr)); });
}

void AsyncCall::OnTimer(const Frame& f) {
  timers_--;
  if (!finish_sent_ && !fail_ && !broken_) out_.push_back(MakeReply(f));
  Frame next;
  if (keys_.Done(f, &next) && !finish_sent_) Arm(std::move(next));
  Pump();
  MaybeDelete();
}

void AsyncCall::Pump() {
  if (!writing_ && !out_.empty() && !finish_sent_) {
    cur_ = std::move(out_.front());
    out_.pop_front();
    writing_ = true;
    grpc::WriteOptions wo;
    if (!out_.empty() && g_buffer_hint) wo.set_buffer_hint();
    pending_++;
    rw_.Write(cur_, wo, &write_tag_);
  }
  if (writing_ || finish_sent_ || !accepted_) return;
  if (fail_ || (client_done_ && keys_.inflight == 0 && out_.empty())) {
    finish_sent_ = true;
    pending_++;
    rw_.Finish(fail_ ? fail_status_ : grpc::Status::OK, &finish_tag_);
  }
}

// ==== main =========================================================================
void Usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--api=callback|async] [--port=N] [--threads=N] [--no-buffer-hint]\n"
               "          [--tls-cert=PEM --tls-key=PEM]   (TLS instead of h2c)\n",
               argv0);
  std::exit(2);
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "peer-grpc-cpp: cannot read %s\n", path.c_str());
    std::exit(1);
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

int main(int argc, char** argv) {
  std::string api = "callback";
  int port = 50051, threads = 1;
  std::string tls_cert, tls_key;
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    if (!std::strncmp(a, "--api=", 6)) api = a + 6;
    else if (!std::strncmp(a, "--port=", 7)) port = std::atoi(a + 7);
    else if (!std::strncmp(a, "--threads=", 10)) threads = std::atoi(a + 10);
    else if (!std::strcmp(a, "--no-buffer-hint")) g_buffer_hint = false;
    else if (!std::strncmp(a, "--tls-cert=", 11)) tls_cert = a + 11;
    else if (!std::strncmp(a, "--tls-key=", 10)) tls_key = a + 10;
    else Usage(argv[0]);
  }
  if ((api != "callback" && api != "async") || port <= 0 || threads <= 0 || tls_cert.empty() != tls_key.empty())
    Usage(argv[0]);

  // Block SIGTERM/SIGINT in every thread gRPC will start; one thread waits.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  TimerThread timers;
  g_timers = &timers;

  grpc::ServerBuilder b;
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!tls_cert.empty()) {
    // gRPC C++'s own TLS stack (Debian's libgrpc: OpenSSL 3); it negotiates
    // ALPN h2 itself. No client certificate requested.
    grpc::SslServerCredentialsOptions so;
    so.pem_key_cert_pairs.push_back({ReadFile(tls_key), ReadFile(tls_cert)});
    creds = grpc::SslServerCredentials(so);
  }
  b.AddListeningPort("127.0.0.1:" + std::to_string(port), creds);
  grpc::ResourceQuota quota("peer");
  quota.SetMaxThreads(threads + 1);  // best effort for the callback API; taskset pins
  b.SetResourceQuota(quota);
  b.SetMaxReceiveMessageSize(4 << 20);

  CbService cb;
  Pipeline::AsyncService as;
  std::vector<std::unique_ptr<AsyncWorker>> workers;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs;
  if (api == "callback") {
    b.RegisterService(&cb);
  } else {
    b.RegisterService(&as);
    for (int i = 0; i < threads; i++) cqs.push_back(b.AddCompletionQueue());
  }
  std::unique_ptr<grpc::Server> server = b.BuildAndStart();
  if (!server) {
    std::fprintf(stderr, "peer-grpc-cpp: cannot listen on 127.0.0.1:%d\n", port);
    return 1;
  }
  std::fprintf(stderr, "peer-grpc-cpp listening on 127.0.0.1:%d (%s) api=%s threads=%d grpc=%s\n", port,
               tls_cert.empty() ? "h2c" : "tls", api.c_str(), threads, grpc::Version().c_str());

  std::vector<std::thread> ths;
  for (auto& cq : cqs) {
    workers.emplace_back(new AsyncWorker(&as, std::move(cq)));
    AsyncWorker* w = workers.back().get();
    ths.emplace_back([w] { w->Run(); });
  }
  int sig = 0;
  sigwait(&set, &sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  for (auto& w : workers) w->cq()->Shutdown();
  for (auto& t : ths) t.join();
  // Calls still parked on drained CQs are leaked on purpose: the process exits.
  std::_Exit(0);
}
