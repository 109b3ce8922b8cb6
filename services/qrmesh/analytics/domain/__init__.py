"""Pure logic of scan analytics: enrichment and rollup rows (ingest); time buckets, breakdowns, peak
times and export cells (queries)."""
