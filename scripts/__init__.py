"""Developer tooling: code generation and the development runner."""
