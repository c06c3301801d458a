"""Database adapter: models, engine/session factory, queries."""
