"""The message store: schema, connections, group-commit ingest and queries."""
