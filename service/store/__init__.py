"""PostgreSQL: the store behind the ledger, its schema, its SQL and its background work."""
