"""vecq.worker: the rq-compatible batching worker, the `vecq` command line and embedded mode."""
