"""Storage: the catalog (SQLite, its schema and migrations), the library folder, paths, vectors."""
