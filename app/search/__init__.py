"""Persistent FAISS collections: SQLite (WAL) is the source of truth, FAISS the in-memory index."""
