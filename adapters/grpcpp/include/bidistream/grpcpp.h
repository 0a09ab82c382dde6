// bidistream/grpcpp.h — the pipeline in front of a gRPC C++ bidi method.
//
// The counterpart of the seed's Interceptor for Go's gRPC: a gRPC C++ server
// keeps its own listener, threads and HTTP/2, and one of its callback-API bidi
// methods (grpc::ServerBidiReactor) gets bidistream's pipeline: keyed FIFO
// ordering, inbound and outbound backpressure with the four policies,
// retries, failure isolation and a graceful drain, configured by the same
// bds_options as bidistreamd (bidistream/options.h).
//
//   bidistream::grpcpp::Runtime rt;                   // pipeline threads
//   if (rt.Start(2, &why) != BDS_OK) ...
//   bidistream::grpcpp::BidiMethod<Req, Resp> m;
//   if (m.Init(&rt, &options, KeyOf, Handle, &why) != BDS_OK) ...
//   class Svc : public my::Service::CallbackService {
//     grpc::ServerBidiReactor<Req, Resp> *Method(grpc::CallbackServerContext *ctx) override {
//       return m.Start(ctx);
//     }
//   };
//   ... server->Shutdown(deadline) after rt.Shutdown(); rt.Wait(deadline); rt.Stop();
//
// adapters/grpcpp/example_server.cc is a complete program.
//
// Threads. A Runtime owns `threads` pipeline threads, each running one
// bds_pipeline (bidistream/pipeline.h) and a small event loop. Each stream
// lives on one of them (its home, round robin): everything gRPC reports about
// the stream (a message read, a write done, a cancel, the end) is posted to
// the home's queue (a mutex and a condition variable) from gRPC's callback
// threads, and only the home thread touches the stream's session, starts its
// reads and writes and finishes it. Messages then run on the pipeline thread
// their ordering key hashes to, as in bidistreamd. Handlers must not block:
// they run on a pipeline thread that serves other streams too; slow work
// goes to a timer (Call::After) or another thread that finishes the call.
//
// Flow. A stream reads one message at a time and starts the next read only
// while its session has inbound room (bds_session_inbound_room; under
// HARD_REJECT always, so that a message over capacity is rejected as in
// bidistreamd): a client faster than its work waits in gRPC's flow control.
// Replies are written one at a time (gRPC allows one write in flight); a
// reply's outbound token is held until gRPC reports its write done, so a
// client that does not read fills the outbound capacity and then meets the
// outbound policy (with fail_fast: RESOURCE_EXHAUSTED).
//
// Status mapping. A stream ends with the status its session closed with,
// projected by bds_status_grpc() (bidistream/status.h): a handler failure
// carries its status and message, a rejected admission or a refused reply
// RESOURCE_EXHAUSTED, a drained shutdown or the grace period's end
// UNAVAILABLE, a panic INTERNAL; a status that sends nothing (the client
// cancelled) finishes the RPC CANCELLED, which gRPC does not send to a client
// that is gone. A clean end (the client half-closed, every reply written)
// is OK. Whatever the status, the replies the pipeline handed to the stream
// before its end are written first (a client that is gone gets none): a
// reply made before a failure reaches the client. The RPC's deadline
// (grpc-timeout) arms the session's deadline: DEADLINE_EXCEEDED.
//
// Misuse (a Call used after Done, Done twice) stops the process with
// "bidistream: <function>: misuse: ..." as the C call API does; so does
// destroying a Runtime or a BidiMethod while streams are still live.
#ifndef BIDISTREAM_GRPCPP_H
#define BIDISTREAM_GRPCPP_H

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_callback.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "bidistream/options.h"
#include "bidistream/status.h"
// pipeline.h spells C11's _Noreturn, which C++ does not have.
#ifndef _Noreturn
#define _Noreturn __attribute__((noreturn))
#define BDS_GRPCPP_NORETURN_DEFINED
#endif
#include "bidistream/pipeline.h"
#ifdef BDS_GRPCPP_NORETURN_DEFINED
#undef _Noreturn
#undef BDS_GRPCPP_NORETURN_DEFINED
#endif

namespace bidistream {
namespace grpcpp {

namespace detail {
class Loop;
class StreamBase;
}  // namespace detail

// Stops the process with "bidistream: <api>: misuse: <what>" on stderr
// (abort), as the C API does (bidistream/pipeline.h).
[[noreturn]] void Misuse(const char *api, const char *what);

// The pipeline threads of the adapter, shared by any number of methods.
class Runtime {
 public:
  Runtime();
  // Stops the threads if Stop() was not called (so every stream must be
  // over: see Stop).
  ~Runtime();
  Runtime(const Runtime &) = delete;
  Runtime &operator=(const Runtime &) = delete;

  // Starts `threads` pipeline threads (1..64), each with its bds_pipeline;
  // keys are placed over them with one random seed. Returns BDS_OK, or
  // BDS_E_INVALID (threads out of range, or started already) or
  // BDS_E_NOMEM with *why (if why is not NULL) set to a static line.
  // Thread: any, once, before the first stream.
  bds_status Start(uint32_t threads, const char **why);
  // The number of pipeline threads (0 before Start). Thread: any.
  uint32_t threads() const { return n_loops_; }

  // Begins the graceful shutdown: every live stream drains
  // (bds_session_shutdown: in-flight work finishes within the options' grace
  // period, then UNAVAILABLE) and every stream that starts from now on is
  // finished UNAVAILABLE at once. Call it before grpc::Server::Shutdown,
  // whose deadline should leave the grace period to the streams. Thread: any;
  // a second call does nothing.
  void Shutdown();
  // Waits until every stream is over and freed (the gRPC RPC done, the
  // session released, every message and reply given back; a Call::After
  // timer holds its call, hence its stream), or until deadline. Returns true
  // when nothing is left, false at the deadline. Thread: any but a pipeline
  // thread (there: a misuse naming Runtime::Wait).
  bool Wait(std::chrono::steady_clock::time_point deadline);
  // Stops and joins the threads and destroys the pipelines. Every stream
  // must be over (Wait returned true), else a misuse naming Runtime::Stop.
  // Thread: any but a pipeline thread. Idempotent.
  void Stop();

  // Streams started and not yet freed. Thread: any.
  uint64_t live_streams() const { return live_.load(std::memory_order_acquire); }

  // Runs fn(cancelled) on the calling pipeline thread after delay, or
  // earlier, with cancelled = true, once call's session has closed (checked
  // every 10 ms while the timer waits), so that work never outlives its
  // stream. The call must be the handler's (before bds_call_done) and stay
  // so until fn runs; fn finishes it. Thread: a pipeline thread of this
  // Runtime only (inside a handler, or a timer); elsewhere a misuse naming
  // Runtime::After. Ownership: fn is moved in and destroyed after it runs.
  void After(bds_call *call, std::chrono::nanoseconds delay, std::function<void(bool cancelled)> fn);

  // Not for users: the adapter's own plumbing.
  detail::Loop *NextHome();
  void StreamStarted() { live_.fetch_add(1, std::memory_order_acq_rel); }
  void StreamFreed();

 private:
  friend class detail::Loop;
  friend class detail::StreamBase;
  detail::Loop **loops_ = nullptr;
  uint32_t n_loops_ = 0;
  std::atomic<uint32_t> next_home_{0};
  std::atomic<uint64_t> live_{0};
  std::atomic<bool> shutting_down_{false};
  bool stopped_ = false;
};

// One message's call, as the handler gets it: a thin handle on the bds_call
// (bidistream/pipeline.h, "calls"), with its request typed. Copyable; every
// copy names the same call, lent to the handler until Done.
template <class Req, class Resp>
class Call {
 public:
  explicit Call(bds_call *call, Runtime *rt) : call_(call), rt_(rt) {}

  // The request. Valid until Done; owned by the adapter. Thread: any,
  // before Done.
  const Req &request() const;
  // The ordering key the resolver gave (empty: none). Valid until Done;
  // owned by the adapter. Thread: any, before Done.
  std::string_view key() const {
    uint32_t n;
    const void *k = bds_call_key(call_, &n);
    return std::string_view(static_cast<const char *>(k), n);
  }
  // 1 on the first attempt, then 2, ... on retries (retry.max_attempts).
  // Thread: any, before Done.
  uint32_t attempt() const { return bds_call_attempt(call_); }
  // Whether the stream is over (cancelled, failed, past its deadline or the
  // grace period): stop long work and finish. Thread: any, before Done.
  bool cancelled() const { return bds_call_cancelled(call_); }

  // Emits a reply, in call order on the stream (FIFO or per key, as the
  // Sender orders them), under outbound backpressure. resp is moved into a
  // reply the adapter owns until gRPC has written it or the pipeline dropped
  // it. Thread: any, before Done (after it: a misuse naming bds_call_reply).
  void Reply(Resp resp) const;
  // Finishes this attempt (bds_call_done): BDS_OK, BDS_E_NONTERMINAL_FAILURE
  // (this message alone failed), or any other status (retried while the
  // budget lasts, then the stream ends with it when failures are terminal).
  // message may be NULL; copied. Thread: any, exactly once per attempt.
  void Done(bds_status status = BDS_OK, const char *message = nullptr) const {
    bds_call_done(call_, status, message);
  }
  // Runtime::After for this call: fn(call, cancelled) runs on this pipeline
  // thread after delay, or at once when the stream ends first. Thread: inside
  // the handler (or a previous After's fn) only.
  void After(std::chrono::nanoseconds delay, std::function<void(Call, bool cancelled)> fn) const {
    Call self = *this;
    rt_->After(call_, delay, [self, f = std::move(fn)](bool c) { f(self, c); });
  }

  // The C call (bidistream/pipeline.h), lent as the Call is. Thread: any.
  bds_call *raw() const { return call_; }

 private:
  bds_call *call_;
  Runtime *rt_;
};

namespace detail {

// An inbound message: the request, its key (the key bytes must live as long
// as the payload, bds_session_receive's rule) and, for a raw read, its bytes
// until they are parsed.
template <class Req>
struct In {
  Req req;
  std::string key;
  grpc::ByteBuffer raw;
};

// An outbound message: the reply the pipeline carries, the gRPC message and,
// for a raw write, its bytes.
template <class Resp>
struct alignas(16) Out {
  bds_reply reply;
  Resp resp;
  grpc::ByteBuffer raw;
};

// The untyped half of a stream, in grpcpp.cc: its session and its state, all
// on the home thread. A typed reactor (Reactor below) supplies the gRPC
// operations.
class StreamBase {
 public:
  struct MethodBase {
    Runtime *rt;
    bds_options options;
    bds_handler_fn handler;
    void *handler_ctx;
    std::atomic<uint64_t> live{0};
  };

  StreamBase(MethodBase *m, grpc::CallbackServerContext *ctx);
  virtual ~StreamBase();

  // From gRPC's threads: each posts an event to the home thread.
  void PostStart();
  void PostReadDone(bool ok);
  void PostWriteDone(bool ok);
  void PostCancel();
  void PostDone();

  // The home thread's handling of each (grpcpp.cc).
  void OnEvent(int kind, bool ok);
  void OnShutdown();

 protected:
  // Starts a read into a fresh In; returns its payload pointer.
  virtual void *ReadStart() = 0;
  // The In a read filled: parses it (raw reads), finds its key (the
  // method's resolver) and its size in bytes (outstanding_bytes_max counts
  // them). Returns false when the bytes are not a Req: *err says so.
  virtual bool ReadKey(void *in, const void **key, uint32_t *key_len, uint32_t *bytes, std::string *err) = 0;
  virtual void InFree(void *in) = 0;
  virtual void WriteStart(bds_reply *reply, bool more) = 0;
  virtual void OutFree(bds_reply *reply) = 0;
  virtual void FinishRpc(const grpc::Status &status) = 0;

 private:
  friend struct SessionOps;
  void Write(bds_reply *reply);
  void Drop(bds_reply *reply);
  void Release(void *payload);
  void Closed(bds_status status, const char *message);
  void InboundReady();
  void MaybeRead();
  void NextWrite();
  void MaybeFinish();
  void MaybeFree();

  MethodBase *m_;
  Loop *home_;
  bds_session *session_ = nullptr;
  std::chrono::system_clock::time_point deadline_;
  void *reading_ = nullptr;          // the In of the read in flight
  bool read_wanted_ = false;         // waiting for inbound room
  bool read_over_ = false;           // the client half-closed, or reads failed
  bds_reply *writing_ = nullptr;     // the reply of the write in flight
  bds_reply *wq_head_ = nullptr, *wq_tail_ = nullptr;  // written by the Sender, not yet started
  bool finish_wanted_ = false, finished_ = false, grpc_done_ = false, released_ = false;
  bool write_broken_ = false, drain_writes_ = false;
  uint64_t seq_ = 0;
  grpc::Status fin_;
  // Payloads the pipeline holds and replies handed to us (queued or being
  // written). A reply still on its way from a handler needs no count: it
  // reaches home before its call's payload is released (one order per
  // pipeline pair), and the payload keeps the stream.
  uint64_t held_ = 0;
  StreamBase *prev_ = nullptr, *next_ = nullptr;  // the home's list of live streams
  friend class Loop;
};

// The reactor of one RPC. Raw = false: the method's own types
// (ServerBidiReactor<Req, Resp>; gRPC parses, and ends a read that does not
// parse as if the client had half-closed). Raw = true: a raw callback method
// (ServerBidiReactor<ByteBuffer, ByteBuffer>, the service's
// WithRawCallbackMethod_*): the adapter parses on the stream's home thread
// and fails the stream INTERNAL ("malformed <type>") on bytes that are not
// a Req, and serializes each reply as it starts its write.
template <class Req, class Resp, bool Raw>
class Reactor final
    : public grpc::ServerBidiReactor<std::conditional_t<Raw, grpc::ByteBuffer, Req>,
                                     std::conditional_t<Raw, grpc::ByteBuffer, Resp>>,
      public StreamBase {
 public:
  using KeyFn = std::function<std::string(const Req &)>;
  Reactor(MethodBase *m, const KeyFn *key, grpc::CallbackServerContext *ctx) : StreamBase(m, ctx), key_(key) {
    PostStart();
  }
  void OnReadDone(bool ok) override { PostReadDone(ok); }
  void OnWriteDone(bool ok) override { PostWriteDone(ok); }
  void OnCancel() override { PostCancel(); }
  void OnDone() override { PostDone(); }

 protected:
  void *ReadStart() override {
    auto *in = new In<Req>();
    if constexpr (Raw) this->StartRead(&in->raw);
    else this->StartRead(&in->req);
    return in;
  }
  bool ReadKey(void *p, const void **key, uint32_t *key_len, uint32_t *bytes, std::string *err) override {
    auto *in = static_cast<In<Req> *>(p);
    if constexpr (Raw) {
      *bytes = static_cast<uint32_t>(in->raw.Length());
      grpc::Status st = grpc::SerializationTraits<Req>::Deserialize(&in->raw, &in->req);
      if (!st.ok()) {
        *err = "malformed " + in->req.GetTypeName();
        return false;
      }
    } else {
      *bytes = static_cast<uint32_t>(in->req.ByteSizeLong());
    }
    if (*key_) in->key = (*key_)(in->req);
    *key = in->key.data();
    *key_len = static_cast<uint32_t>(in->key.size());
    return true;
  }
  void InFree(void *p) override { delete static_cast<In<Req> *>(p); }
  void WriteStart(bds_reply *r, bool more) override {
    auto *out = static_cast<Out<Resp> *>(r->data);
    grpc::WriteOptions wo;
    if (more) wo.set_buffer_hint();
    if constexpr (Raw) {
      bool own = false;
      grpc::Status st = grpc::SerializationTraits<Resp>::Serialize(out->resp, &out->raw, &own);
      if (!st.ok()) Misuse("Call::Reply", "the reply does not serialize (a required field unset?)");
      this->StartWrite(&out->raw, wo);
    } else {
      this->StartWrite(&out->resp, wo);
    }
  }
  void OutFree(bds_reply *r) override { delete static_cast<Out<Resp> *>(r->data); }
  void FinishRpc(const grpc::Status &st) override { this->Finish(st); }

 private:
  const KeyFn *key_;
};

}  // namespace detail

// A bidi method served through the pipeline: its options, key resolver and
// handler. Must outlive every stream it started (Runtime::Wait), else its
// destructor stops the process with a misuse message naming
// BidiMethod::~BidiMethod.
template <class Req, class Resp>
class BidiMethod {
 public:
  // The ordering key of a request (KEYED_FIFO): messages with the same key
  // run one after another, different keys in parallel on the pipeline
  // threads. Runs on the stream's home thread; must not block. Empty (or no
  // resolver): one order for the whole stream.
  using KeyFn = std::function<std::string(const Req &)>;
  // Runs each admitted message on its key's pipeline thread (see Call).
  using HandlerFn = std::function<void(Call<Req, Resp>)>;

  BidiMethod() = default;
  ~BidiMethod();
  BidiMethod(const BidiMethod &) = delete;
  BidiMethod &operator=(const BidiMethod &) = delete;

  // Binds the method to a started runtime. options is copied and validated
  // (bds_options_validate). Returns BDS_OK, or BDS_E_INVALID with *why (if
  // why is not NULL) naming the field, the runtime not started, no handler
  // or Init called twice. Thread: any, before the first Start.
  bds_status Init(Runtime *rt, const bds_options *options, KeyFn key, HandlerFn handler, const char **why);

  // The reactor for one RPC: return it from the CallbackService's method.
  // The reactor deletes itself once the RPC and its pipeline work are over.
  // A request gRPC cannot parse ends the reads as a half-close would (gRPC
  // C++ does not tell them apart): use StartRaw to answer it INTERNAL.
  // Thread: gRPC's (any).
  grpc::ServerBidiReactor<Req, Resp> *Start(grpc::CallbackServerContext *ctx) {
    return new detail::Reactor<Req, Resp, false>(&base_, &key_, ctx);
  }
  // The same for a raw callback method (the generated service's
  // WithRawCallbackMethod_<Method>): the adapter parses each request on the
  // stream's home thread and ends the stream INTERNAL ("malformed <type>")
  // when it does not parse, and serializes each reply when its write
  // starts. Thread: gRPC's (any).
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> *StartRaw(grpc::CallbackServerContext *ctx) {
    return new detail::Reactor<Req, Resp, true>(&base_, &key_, ctx);
  }

 private:
  static void Trampoline(bds_call *call, void *ctx) {
    auto *self = static_cast<BidiMethod *>(ctx);
    self->handler_(Call<Req, Resp>(call, self->base_.rt));
  }
  detail::StreamBase::MethodBase base_{};
  KeyFn key_;
  HandlerFn handler_;
};

// ---- templates ---------------------------------------------------------------

template <class Req, class Resp>
const Req &Call<Req, Resp>::request() const {
  return static_cast<const detail::In<Req> *>(bds_call_payload(call_))->req;
}

template <class Req, class Resp>
void Call<Req, Resp>::Reply(Resp resp) const {
  auto *out = new detail::Out<Resp>();
  out->resp = std::move(resp);
  out->reply.data = out;
  out->reply.bytes = static_cast<uint32_t>(out->resp.ByteSizeLong());
  bds_call_reply(call_, &out->reply);
}

template <class Req, class Resp>
BidiMethod<Req, Resp>::~BidiMethod() {
  if (base_.live.load(std::memory_order_acquire) != 0)
    Misuse("BidiMethod::~BidiMethod", "streams of this method are still live (wait for Runtime::Wait)");
}

template <class Req, class Resp>
bds_status BidiMethod<Req, Resp>::Init(Runtime *rt, const bds_options *options, KeyFn key, HandlerFn handler,
                                       const char **why) {
  const char *w = nullptr;
  bds_status st = BDS_OK;
  if (base_.rt) {
    w = "BidiMethod::Init: called twice";
  } else if (!rt || rt->threads() == 0) {
    w = "BidiMethod::Init: the runtime is not started (Runtime::Start)";
  } else if (!options || !handler) {
    w = "BidiMethod::Init: options and handler are required";
  } else {
    st = bds_options_validate(options, &w);
  }
  if (w) {
    if (why) *why = w;
    return st == BDS_OK ? BDS_E_INVALID : st;
  }
  base_.rt = rt;
  base_.options = *options;
  base_.handler = &BidiMethod::Trampoline;
  base_.handler_ctx = this;
  key_ = std::move(key);
  handler_ = std::move(handler);
  return BDS_OK;
}

}  // namespace grpcpp
}  // namespace bidistream

#endif
