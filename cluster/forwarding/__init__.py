"""Forwarding between nodes: the frames, the handshake, the reliable link and the
gRPC transport that carries it."""
