#!/usr/bin/python3
"""grpc.reflection.v1 and v1alpha ServerReflection of bidistreamd, with
python3-grpcio as the client (docs/SERVICE.md).

The reflection messages come from Debian's grpc-proto file, compiled here
with protoc --python_out into a temporary directory; the descriptors the
server sends are parsed with protobuf's own descriptor_pb2. Checked: the
service list, a file fetched by name and by symbol (a message, a nested
field, a service, a method) with its imports, NOT_FOUND for unknown names,
a malformed request ending the stream INVALID_ARGUMENT while the server
serves on, v1alpha answering the same, and no reflection without the flag.
Prints "N passed, N failed" last.

usage: test_reflection.py PATH/TO/bidistreamd
"""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import grpc
from google.protobuf import descriptor_pb2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_grpcio as g  # noqa: E402  (Server, run_main)

GRPC_PROTO = '/usr/share/grpc-proto'
V1 = '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo'
V1ALPHA = '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo'
rpb = None  # reflection_pb2, generated in setUpModule
gen_dir = None


def setUpModule():
    global rpb, gen_dir
    gen_dir = tempfile.mkdtemp(prefix='bds-reflection-')
    subprocess.run(['protoc', '-I' + GRPC_PROTO, '--python_out=' + gen_dir,
                    GRPC_PROTO + '/grpc/reflection/v1/reflection.proto'], check=True, timeout=60)
    # Loaded by its path: the package name "grpc" is grpcio's.
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'reflection_pb2', os.path.join(gen_dir, 'grpc/reflection/v1/reflection_pb2.py'))
    rpb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rpb)


def tearDownModule():
    shutil.rmtree(gen_dir, ignore_errors=True)


def ask(ch, requests, path=V1, timeout=10):
    """Sends the requests on one stream; returns the parsed responses."""
    call = ch.stream_stream(path, request_serializer=lambda r: r.SerializeToString(),
                            response_deserializer=rpb.ServerReflectionResponse.FromString)
    return list(call(iter(requests), timeout=timeout))


def files_of(resp):
    out = []
    for b in resp.file_descriptor_response.file_descriptor_proto:
        f = descriptor_pb2.FileDescriptorProto()
        f.ParseFromString(b)
        out.append(f)
    return out


class Reflection(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = g.Server('--reflection', '--interop')
        cls.ch = cls.srv.channel()

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        assert cls.srv.stop() == 0

    def test_lists_the_services_served(self):
        [r] = ask(self.ch, [rpb.ServerReflectionRequest(host='h', list_services='')])
        self.assertEqual(r.valid_host, 'h')
        self.assertEqual(r.original_request.list_services, '')
        names = [s.name for s in r.list_services_response.service]
        for want in ('bidistream.v1.Pipeline', 'grpc.health.v1.Health', 'grpc.testing.TestService',
                     'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'):
            self.assertIn(want, names)
        self.assertEqual(len(names), len(set(names)), 'each service once: %r' % names)

    def test_file_by_symbol_comes_with_its_imports(self):
        [r] = ask(self.ch, [rpb.ServerReflectionRequest(file_containing_symbol='grpc.testing.TestService')])
        files = files_of(r)
        self.assertEqual(files[0].name, 'grpc/testing/test.proto')
        self.assertIn('TestService', [s.name for s in files[0].service])
        names = [f.name for f in files]
        for dep in files[0].dependency:
            self.assertIn(dep, names, 'every import comes along')
        self.assertEqual(len(names), len(set(names)), 'each file once: %r' % names)
        # A client can build a pool from what it got and find the method's types.
        from google.protobuf import descriptor_pool
        pool = descriptor_pool.DescriptorPool()
        for f in reversed(files):
            pool.Add(f)
        m = pool.FindMethodByName('grpc.testing.TestService.UnaryCall')
        self.assertEqual(m.input_type.full_name, 'grpc.testing.SimpleRequest')

    def test_symbols_of_every_kind(self):
        cases = {
            'bidistream.v1.Frame': 'pipeline.proto',
            'bidistream.v1.Frame.key': 'pipeline.proto',
            'bidistream.v1.Pipeline.Process': 'pipeline.proto',
            'grpc.health.v1.HealthCheckResponse.ServingStatus': 'grpc/health/v1/health.proto',
            'grpc.health.v1.Health': 'grpc/health/v1/health.proto',
            '.grpc.testing.SimpleRequest': 'grpc/testing/messages.proto',
        }
        reqs = [rpb.ServerReflectionRequest(file_containing_symbol=s) for s in cases]
        resps = ask(self.ch, reqs)
        self.assertEqual(len(resps), len(cases), 'one response per request, in order')
        for (sym, want), r in zip(cases.items(), resps):
            self.assertEqual(r.original_request.file_containing_symbol, sym)
            self.assertEqual(r.WhichOneof('message_response'), 'file_descriptor_response', sym)
            self.assertEqual(files_of(r)[0].name, want, sym)

    def test_file_by_name_and_not_found(self):
        rs = ask(self.ch, [rpb.ServerReflectionRequest(file_by_filename='grpc/health/v1/health.proto'),
                           rpb.ServerReflectionRequest(file_by_filename='no/such.proto'),
                           rpb.ServerReflectionRequest(file_containing_symbol='no.such.Thing'),
                           rpb.ServerReflectionRequest(file_containing_symbol='bidistream.v1.Frame.nofield'),
                           rpb.ServerReflectionRequest(file_containing_extension=rpb.ExtensionRequest(
                               containing_type='bidistream.v1.Frame', extension_number=100)),
                           rpb.ServerReflectionRequest(all_extension_numbers_of_type='bidistream.v1.Frame')])
        self.assertEqual(files_of(rs[0])[0].name, 'grpc/health/v1/health.proto')
        for r in rs[1:5]:
            self.assertEqual(r.WhichOneof('message_response'), 'error_response')
            self.assertEqual(r.error_response.error_code, grpc.StatusCode.NOT_FOUND.value[0])
        self.assertIn('no/such.proto', rs[1].error_response.error_message)
        self.assertEqual(rs[5].all_extension_numbers_response.base_type_name, 'bidistream.v1.Frame')
        self.assertEqual(list(rs[5].all_extension_numbers_response.extension_number), [])

    def test_v1alpha_answers_the_same(self):
        # v1alpha's messages are v1's field for field: the same bytes answer.
        [r] = ask(self.ch, [rpb.ServerReflectionRequest(file_containing_symbol='bidistream.v1.Frame')], path=V1ALPHA)
        self.assertEqual(files_of(r)[0].name, 'pipeline.proto')

    def test_malformed_request_ends_the_stream_and_the_server_serves_on(self):
        call = self.ch.stream_stream(V1, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with self.assertRaises(grpc.RpcError) as e:
            list(call(iter([b'\x0a\xff']), timeout=10))  # field 1, a length past the end
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        [r] = ask(self.ch, [rpb.ServerReflectionRequest(list_services='')])
        self.assertTrue(r.list_services_response.service)


class Off(unittest.TestCase):
    def test_no_reflection_without_the_flag(self):
        srv = g.Server()
        ch = srv.channel()
        try:
            with self.assertRaises(grpc.RpcError) as e:
                ask(ch, [rpb.ServerReflectionRequest(list_services='')])
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        finally:
            ch.close()
            assert srv.stop() == 0


if __name__ == '__main__':
    g.run_main(sys.modules[__name__], __doc__)
