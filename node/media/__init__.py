"""Media: chunked resumable uploads, content-addressed deduplicated files, ranged downloads."""
