"""What operators see of a running service: metrics and logs."""
