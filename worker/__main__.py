"""`python -m vecq.worker` is the `vecq` command (the GPU supervisor starts its workers this way)."""

from vecq.worker.cli import main

main()
