"""The store's earlier on-disk format (a JSON spec, a snapshot and write-ahead logs per
collection), kept only to import such a data dir into SQLite on first start."""
