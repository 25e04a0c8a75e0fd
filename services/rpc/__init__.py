"""The gRPC edge: servicers, mapping to protobuf, errors, auth, and the composition root (server)."""
