"""Routes: the HTTP handlers, one module per resource (paths are documented in docs/api.md)."""
