"""Ingest: finding photos on disk (scanner, watcher) and reading their pixels (images, derived images)."""
