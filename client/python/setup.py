"""Builds ssmd_client, generating ssmd_client/ssmd_pb2.py from proto/ssmd.proto.

The schema lives once, in the repository's proto/ folder (two levels up). The
generated module is written into the build tree only, with the protoc bundled
in grpcio-tools so that it matches the protobuf runtime installed beside it.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


class build_py_with_proto(build_py):
    def run(self):
        super().run()
        from grpc_tools import protoc

        out = os.path.join(self.build_lib, "ssmd_client")
        os.makedirs(out, exist_ok=True)
        rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}",
                          os.path.join(PROTO_DIR, "ssmd.proto")])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {PROTO_DIR}/ssmd.proto")


setup(cmdclass={"build_py": build_py_with_proto})
