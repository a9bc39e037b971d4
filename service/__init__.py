"""The credits service: a gRPC microservice that owns customers' credits."""

import os

# gRPC's C core writes its own plain-text lines to stderr, which would break the JSON log
# stream; at INFO it writes one for every TLS handshake a client without a valid
# certificate fails, which anyone able to connect could use to flood the logs. Set here,
# before any module imports grpc; an operator who sets GRPC_VERBOSITY keeps their value
# (e.g. INFO or DEBUG to diagnose connections).
GRPC_VERBOSITY_DEFAULT = "ERROR"
os.environ.setdefault("GRPC_VERBOSITY", GRPC_VERBOSITY_DEFAULT)
