"""The gRPC face: the server, the servicer that translates, and health."""
