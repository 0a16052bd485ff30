// A gRPC echo server for bench/grpc.sh: answers every method of every service with the request's
// bytes and status OK. It uses the callback generic API, so it needs neither a .proto nor the
// protoc plugin; bench/grpc.sh compiles it with g++ against Debian's libgrpc++-dev, outside CMake.
//
// usage: grpc_echo_server PORT        (listens on 127.0.0.1:PORT, plaintext h2c; prints "ready")
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

namespace {

// Serves one call: reads the request message, writes it back and finishes with OK in one step.
// A call that ends before a message arrives finishes with OK and no message. gRPC's callback
// threads call it, one callback at a time per call; it deletes itself when the call is done.
class echo_reactor final : public grpc::ServerGenericBidiReactor {
 public:
  echo_reactor() { StartRead(&message_); }

  void OnReadDone(bool ok) override {
    if (ok) {
      StartWriteAndFinish(&message_, grpc::WriteOptions(), grpc::Status::OK);
    } else {
      Finish(grpc::Status::OK);
    }
  }

  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer message_;
};

class echo_service final : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
    return new echo_reactor;
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s PORT\n", argv[0]);
    return 2;
  }
  echo_service service;
  int bound_port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(std::string("127.0.0.1:") + argv[1], grpc::InsecureServerCredentials(),
                           &bound_port);
  builder.RegisterCallbackGenericService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || bound_port == 0) {
    std::fprintf(stderr, "grpc_echo_server: cannot listen on 127.0.0.1:%s\n", argv[1]);
    return 1;
  }
  std::printf("ready %d\n", bound_port);
  std::fflush(stdout);
  server->Wait();
  return 0;
}
