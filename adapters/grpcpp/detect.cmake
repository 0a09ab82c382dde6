# Whether the gRPC C++ adapter can be built here: Debian's libgrpc++-dev and
# libprotobuf-dev (pkg-config), protoc and grpc_cpp_plugin, and a C++
# compiler. Sets BDS_GRPCPP_FOUND, the default of the BDS_GRPCPP option; off
# in the libFuzzer build (BDS_FUZZ), whose clang-only flags apply to every
# target and which has nothing to fuzz here.
include(CheckLanguage)
check_language(CXX)
pkg_check_modules(BDS_GRPCPP_PC QUIET IMPORTED_TARGET grpc++ protobuf)
find_program(BDS_PROTOC protoc)
find_program(BDS_GRPC_CPP_PLUGIN grpc_cpp_plugin)
if(NOT BDS_FUZZ AND CMAKE_CXX_COMPILER AND BDS_GRPCPP_PC_FOUND AND BDS_PROTOC AND BDS_GRPC_CPP_PLUGIN)
  set(BDS_GRPCPP_FOUND ON)
else()
  set(BDS_GRPCPP_FOUND OFF)
endif()
