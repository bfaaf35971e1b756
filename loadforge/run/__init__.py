"""The coordinator of a run: workers (and shards), the start barrier, exact merging, the live view."""
