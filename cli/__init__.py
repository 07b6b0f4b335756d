"""The `threadline` command line: `process` (agents, threads) and `server` (the embedded Temporal server)."""
