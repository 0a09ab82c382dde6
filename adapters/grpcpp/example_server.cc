// bidistream-grpcpp — bidistream.v1.Pipeline/Process served by gRPC C++
// (callback API) through the pipeline (bidistream/grpcpp.h).
//
// The same service as bidistreamd's (docs/SERVICE.md): each Frame is answered
// with its key, seq and payload; work_us delays the reply with a timer on
// the pipeline thread (never blocking it); fail = true fails the message
// (INTERNAL with default options). Keyed FIFO, backpressure, retries and the
// drain are the pipeline's, configured by bidistreamd's own flags (the same
// table, tools/bidistreamd_config.c): --listen, --shards (the adapter's
// pipeline threads; gRPC keeps its own), every pipeline option, --grace,
// --max-message-bytes, --max-concurrent-streams and --stream-window-bytes
// (gRPC's lookahead, BDP probing off). The other connection flags
// (timers, memory budgets, limits of bidistreamd's HTTP/2) are accepted and
// left to gRPC's own defaults. grpc.health.v1.Health is gRPC's default
// health service: SERVING, NOT_SERVING once the shutdown began.
//
// Prints "bidistream-grpcpp: listening on HOST:PORT with N shards" on stderr
// once it serves (the e2e tests wait for it). SIGTERM/SIGINT drain: new
// streams UNAVAILABLE, in-flight work finishes within --grace, then gRPC
// stops; exit 0, or 1 when work was still running 5 s after the grace period
// (abandoned). A second signal while stopping exits at once with 128 + its
// number.
//
//   bidistream-grpcpp [bidistreamd flags]
#include <grpcpp/ext/health_check_service_server_builder_option.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "bidistream/grpcpp.h"
#include "pipeline.grpc.pb.h"

extern "C" {
#include "bidistreamd_config.h"
}

using bidistream::v1::Frame;
using ProcessCall = bidistream::grpcpp::Call<Frame, Frame>;

namespace {

constexpr const char *kProg = "bidistream-grpcpp";

Frame Echo(const Frame &in) {
  Frame r;
  r.set_key(in.key());
  r.set_seq(in.seq());
  r.set_payload(in.payload());
  return r;
}

void Process(ProcessCall call) {
  const Frame &f = call.request();
  if (f.fail()) {
    call.Done(BDS_INTERNAL, "frame failed as requested (fail = true)");
    return;
  }
  if (f.work_us() == 0) {
    call.Reply(Echo(f));
    call.Done();
    return;
  }
  // At most an hour, as bidistreamd; the timer ends early with the stream.
  uint64_t us = f.work_us() > 3600ULL * 1000000ULL ? 3600ULL * 1000000ULL : f.work_us();
  call.After(std::chrono::microseconds(us), [](ProcessCall c, bool cancelled) {
    if (cancelled) {
      c.Done(BDS_CANCELLED, nullptr);
      return;
    }
    c.Reply(Echo(c.request()));
    c.Done();
  });
}

// Raw, so that a Frame that does not parse ends its stream INTERNAL
// ("malformed bidistream.v1.Frame"), as in bidistreamd, instead of passing
// for a half-close (BidiMethod::StartRaw).
class PipelineService final
    : public bidistream::v1::Pipeline::WithRawCallbackMethod_Process<bidistream::v1::Pipeline::Service> {
 public:
  explicit PipelineService(bidistream::grpcpp::BidiMethod<Frame, Frame> *m) : m_(m) {}
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> *Process(grpc::CallbackServerContext *ctx) override {
    return m_->StartRaw(ctx);
  }

 private:
  bidistream::grpcpp::BidiMethod<Frame, Frame> *m_;
};

uint32_t Cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  int n = CPU_COUNT(&set);
  return n > 0 ? static_cast<uint32_t>(n) : 1;
}

}  // namespace

int main(int argc, char **argv) {
  bds_tool_config cfg;
  int rc = bds_tool_prepare(argc, argv, &cfg, stdout, stderr);
  if (rc != BDS_TOOL_PROCEED) return rc;
  const bds_server_config &sc = cfg.server;

  // Signals are taken by one thread (sigwait): blocked before any other
  // thread exists, so every thread inherits the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  bidistream::grpcpp::Runtime rt;
  const char *why = nullptr;
  uint32_t threads = sc.shards ? sc.shards : Cpus();
  if (threads > 64) threads = 64;
  if (rt.Start(threads, &why) != BDS_OK) {
    std::fprintf(stderr, "%s: %s\n", kProg, why);
    return 1;
  }
  bidistream::grpcpp::BidiMethod<Frame, Frame> method;
  if (method.Init(&rt, &sc.options, [](const Frame &f) { return f.key(); }, Process, &why) != BDS_OK) {
    std::fprintf(stderr, "%s: %s\n", kProg, why);
    return 2;
  }

  PipelineService service(&method);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  std::string listen = sc.listen ? sc.listen : "127.0.0.1:50051";
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  // A port something listens on is refused, as bidistreamd does (gRPC would
  // otherwise share it through SO_REUSEPORT).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, sc.reuse_port ? 1 : 0);
  builder.SetMaxReceiveMessageSize(static_cast<int>(sc.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(sc.max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, static_cast<int>(sc.max_concurrent_streams));
  // --stream-window-bytes is the stream window, as in bidistreamd: gRPC's
  // BDP probing would otherwise grow it (to megabytes), so that a stream the
  // pipeline stopped reading still filled gRPC's buffers far past it.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, static_cast<int>(sc.stream_window_bytes));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  // --compress-responses, as gRPC C++ does it: its default algorithm for
  // replies (used when the client takes it; "deflate" is the zlib format in
  // both).
  static const grpc_compression_algorithm kReplyCompression[] = {GRPC_COMPRESS_NONE, GRPC_COMPRESS_DEFLATE,
                                                                 GRPC_COMPRESS_GZIP};
  builder.SetDefaultCompressionAlgorithm(kReplyCompression[sc.compress_responses]);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "%s: listen %s: cannot serve (address in use or invalid)\n", kProg, listen.c_str());
    if (server) server->Shutdown();
    rt.Stop();
    return 1;
  }
  // The services bidistreamd's health check knows ("" is gRPC's default).
  server->GetHealthCheckService()->SetServingStatus("bidistream.v1.Pipeline", true);
  server->GetHealthCheckService()->SetServingStatus("grpc.health.v1.Health", true);
  std::string host = listen.substr(0, listen.rfind(':'));
  std::fprintf(stderr, "%s: listening on %s:%d with %u shards (gRPC C++ through adapters/grpcpp)\n", kProg,
               host.c_str(), port, threads);
  std::fflush(stderr);

  int sig = 0;
  sigwait(&sigs, &sig);
  std::fprintf(stderr, "%s: shutting down (signal %d)\n", kProg, sig);
  std::fflush(stderr);
  // A second signal while stopping ends the process at once.
  std::thread([sigs] {
    int s2 = 0;
    sigwait(&sigs, &s2);
    _exit(128 + s2);
  }).detach();

  auto grace = std::chrono::nanoseconds(sc.options.shutdown.grace_period_ns);
  server->GetHealthCheckService()->Shutdown();
  rt.Shutdown();
  // gRPC waits for the RPCs (the pipeline ends each within the grace
  // period), then cancels what is left a second later.
  server->Shutdown(std::chrono::system_clock::now() + grace + std::chrono::seconds(1));
  bool clean = rt.Wait(std::chrono::steady_clock::now() + std::chrono::seconds(5));
  if (!clean) {
    std::fprintf(stderr, "%s: stopped hard: work was still running\n", kProg);
    std::fflush(stderr);
    _exit(1);  // handlers still hold their calls: nothing can be freed
  }
  server->Wait();
  rt.Stop();
  return 0;
}
