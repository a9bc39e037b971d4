"""The credits service: a gRPC microservice that owns customers' credits."""
