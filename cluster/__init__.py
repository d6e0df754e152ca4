"""What makes raftmq nodes one broker, and the CLI that assembles a node.

gRPC's C core logs at INFO to stderr by default ("Got goaway", ...), lines a
node's operator cannot act on and that drown the node's own log. It reads
``GRPC_VERBOSITY`` once, when grpc is first imported; every module that
imports grpc is under this package (node/ never does), so setting it here
comes first. A user who set ``GRPC_VERBOSITY`` or ``GRPC_TRACE`` asked for
gRPC's lines and keeps them.
"""

import os

if "GRPC_VERBOSITY" not in os.environ and "GRPC_TRACE" not in os.environ:
    os.environ["GRPC_VERBOSITY"] = "ERROR"
