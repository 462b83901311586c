"""gRPC wiring: servicers, error mapping, admin authentication, health, the CLI."""
