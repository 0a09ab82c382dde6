// tests/adapters/grpcpp: the gRPC C++ adapter in one process: a gRPC C++
// server whose Process method goes through bidistream/grpcpp.h, driven by a
// gRPC C++ client over loopback. The e2e suite (e2e.grpcpp) drives the
// example server with grpcio; these check what a library user relies on:
// order per key, the handler's status on the wire, retries, the options
// refused with a reason, a timer's work ending with its stream, and that
// every stream is freed when the RPCs end.
#include <criterion/criterion.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bidistream/grpcpp.h"
#include "pipeline.grpc.pb.h"

using bidistream::v1::Frame;
using bidistream::v1::Pipeline;
using ProcessCall = bidistream::grpcpp::Call<Frame, Frame>;
using Method = bidistream::grpcpp::BidiMethod<Frame, Frame>;

namespace {

class Service final : public Pipeline::CallbackService {
 public:
  explicit Service(Method *m) : m_(m) {}
  grpc::ServerBidiReactor<Frame, Frame> *Process(grpc::CallbackServerContext *ctx) override { return m_->Start(ctx); }

 private:
  Method *m_;
};

Frame Make(const std::string &key, uint64_t seq, uint32_t work_us = 0, bool fail = false) {
  Frame f;
  f.set_key(key);
  f.set_seq(seq);
  f.set_payload("p" + std::to_string(seq));
  f.set_work_us(work_us);
  f.set_fail(fail);
  return f;
}

// A runtime, a method and a gRPC server on an ephemeral port; torn down in
// the order a program must follow (bidistream/grpcpp.h).
struct Fixture {
  bidistream::grpcpp::Runtime rt;
  Method method;
  std::unique_ptr<Service> service;
  std::unique_ptr<grpc::Server> server;
  std::shared_ptr<grpc::Channel> channel;

  Fixture(const bds_options &o, Method::HandlerFn handler, uint32_t threads = 2) {
    const char *why = nullptr;
    cr_assert_eq(rt.Start(threads, &why), BDS_OK, "Runtime::Start: %s", why);
    cr_assert_eq(method.Init(&rt, &o, [](const Frame &f) { return f.key(); }, std::move(handler), &why), BDS_OK,
                 "BidiMethod::Init: %s", why);
    service = std::make_unique<Service>(&method);
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(service.get());
    server = b.BuildAndStart();
    cr_assert(server && port > 0, "the gRPC server did not start");
    channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  }

  // Every stream freed once gRPC is done: nothing the pipeline held leaks.
  void Stop() {
    rt.Shutdown();
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(10));
    cr_assert(rt.Wait(std::chrono::steady_clock::now() + std::chrono::seconds(10)),
              "streams still live 10 s after the server stopped: %llu",
              static_cast<unsigned long long>(rt.live_streams()));
    server->Wait();
    rt.Stop();
  }
};

// Sends frames, half-closes, reads every reply; returns the final status.
grpc::Status Exchange(Fixture &fx, const std::vector<Frame> &reqs, std::vector<Frame> *got) {
  auto stub = Pipeline::NewStub(fx.channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto stream = stub->Process(&ctx);
  for (const Frame &f : reqs)
    if (!stream->Write(f)) break;
  stream->WritesDone();
  Frame r;
  while (stream->Read(&r)) got->push_back(r);
  return stream->Finish();
}

void EchoAfterWork(ProcessCall call) {
  const Frame &f = call.request();
  if (f.fail()) {
    call.Done(BDS_INVALID_ARGUMENT, "refused as asked");
    return;
  }
  auto reply = [](ProcessCall c, bool cancelled) {
    if (cancelled) {
      c.Done(BDS_CANCELLED, nullptr);
      return;
    }
    Frame r;
    r.set_key(c.request().key());
    r.set_seq(c.request().seq());
    r.set_payload(c.request().payload());
    c.Reply(std::move(r));
    c.Done();
  };
  if (f.work_us() == 0) reply(call, false);
  else call.After(std::chrono::microseconds(f.work_us()), reply);
}

}  // namespace

Test(grpcpp, each_key_in_order_every_reply_then_ok, .timeout = 120) {
  Fixture fx(bds_default_options(), EchoAfterWork);
  std::vector<Frame> reqs, got;
  // Later frames of a key have less work: without the pipeline's keyed
  // FIFO they would overtake the earlier ones.
  for (uint64_t i = 1; i <= 200; i++) reqs.push_back(Make("k" + std::to_string(i % 5), i, (200 - i) * 20));
  grpc::Status st = Exchange(fx, reqs, &got);
  cr_assert(st.ok(), "status %d: %s", st.error_code(), st.error_message().c_str());
  cr_assert_eq(got.size(), reqs.size(), "%zu replies for %zu frames", got.size(), reqs.size());
  std::map<std::string, uint64_t> last;
  for (const Frame &f : got) {
    cr_assert_gt(f.seq(), last[f.key()], "key %s: seq %llu after %llu", f.key().c_str(),
                 static_cast<unsigned long long>(f.seq()), static_cast<unsigned long long>(last[f.key()]));
    cr_assert_eq(f.payload(), "p" + std::to_string(f.seq()));
    last[f.key()] = f.seq();
  }
  fx.Stop();
}

Test(grpcpp, a_handler_failure_is_the_streams_status_after_the_replies_before_it, .timeout = 120) {
  bds_options o = bds_default_options();
  o.inbound.ordering.mode = BDS_ORDERING_FIFO;  // one order: the failure comes after frames 1 and 2
  Fixture fx(o, EchoAfterWork);
  std::vector<Frame> got;
  grpc::Status st = Exchange(fx, {Make("a", 1), Make("a", 2), Make("a", 3, 0, true), Make("a", 4)}, &got);
  cr_assert_eq(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT, "status %d: %s", st.error_code(),
               st.error_message().c_str());
  cr_assert_eq(st.error_message(), "refused as asked");
  cr_assert_eq(got.size(), 2u, "%zu replies", got.size());
  cr_assert_eq(got[0].seq(), 1u);
  cr_assert_eq(got[1].seq(), 2u);
  fx.Stop();
}

Test(grpcpp, a_failed_attempt_is_retried_and_answered_once, .timeout = 120) {
  bds_options o = bds_default_options();
  o.retry.max_attempts = 2;
  std::atomic<int> attempts{0};
  Fixture fx(o, [&attempts](ProcessCall c) {
    attempts++;
    if (c.attempt() == 1) {
      c.Done(BDS_UNAVAILABLE, "first attempt fails");
      return;
    }
    Frame r;
    r.set_seq(c.request().seq());
    c.Reply(std::move(r));
    c.Done();
  });
  std::vector<Frame> got;
  grpc::Status st = Exchange(fx, {Make("a", 7)}, &got);
  cr_assert(st.ok(), "status %d: %s", st.error_code(), st.error_message().c_str());
  cr_assert_eq(got.size(), 1u);
  cr_assert_eq(got[0].seq(), 7u);
  cr_assert_eq(attempts.load(), 2);
  fx.Stop();
}

Test(grpcpp, init_refuses_bad_options_and_an_unstarted_runtime_with_a_reason) {
  bidistream::grpcpp::Runtime rt;
  Method m;
  bds_options o = bds_default_options();
  const char *why = nullptr;
  cr_assert_eq(m.Init(&rt, &o, nullptr, EchoAfterWork, &why), BDS_E_INVALID);
  cr_assert(why && std::string(why).find("Runtime::Start") != std::string::npos, "why: %s", why);
  cr_assert_eq(rt.Start(0, &why), BDS_E_INVALID);
  cr_assert_eq(rt.Start(1, &why), BDS_OK);
  o.inbound.backpressure.policy = static_cast<bds_backpressure_policy>(9);
  why = nullptr;
  cr_assert_eq(m.Init(&rt, &o, nullptr, EchoAfterWork, &why), BDS_E_INVALID);
  cr_assert(why != nullptr, "no reason given");
  o = bds_default_options();
  cr_assert_eq(m.Init(&rt, &o, nullptr, EchoAfterWork, &why), BDS_OK, "%s", why);
  cr_assert_eq(m.Init(&rt, &o, nullptr, EchoAfterWork, &why), BDS_E_INVALID, "Init twice is refused");
  rt.Stop();
}

Test(grpcpp, work_on_a_timer_ends_with_its_stream, .timeout = 120) {
  Fixture fx(bds_default_options(), EchoAfterWork);
  auto stub = Pipeline::NewStub(fx.channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  auto stream = stub->Process(&ctx);
  cr_assert(stream->Write(Make("a", 1, 3600u * 1000000u)), "the frame was not sent");  // an hour of work
  stream->WritesDone();
  Frame r;
  cr_assert_not(stream->Read(&r), "a reply came for an hour of work");
  grpc::Status st = stream->Finish();
  cr_assert_eq(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED, "status %d", st.error_code());
  // Runtime::After's timer ends early with its stream (its cancel check):
  // nothing is left to wait for, an hour before the work was due.
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  cr_assert(fx.rt.Wait(until), "the stream still holds its pipeline 10 s after its deadline: %llu live",
            static_cast<unsigned long long>(fx.rt.live_streams()));
  fx.Stop();
}
