"""vecq's `Supervisor` over children a test chooses (`vecq worker --gpus` starts only `vecq worker`).

Run as `python supervised.py SPEC.json`, where SPEC is
`{"cap": seconds or null, "children": [{"argv": [...], "env": {...}, "backoff": seconds}]}`:
`cap` stands in for `BACKOFF_CAP_S` (30 s) so a test sees the cap in seconds, `backoff` is a
child's first restart delay (1 s in `vecq worker --gpus`).  Everything else is the product's
supervision loop: start, restart with doubling capped backoff, SIGTERM to stop.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from vecq.worker import supervisor
from vecq.worker.supervisor import Child, Supervisor


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    spec = json.loads(Path(sys.argv[1]).read_text())
    if spec.get("cap") is not None:
        supervisor.BACKOFF_CAP_S = float(spec["cap"])
    children = [
        Child(
            slot=slot,
            gpu=str(slot),
            argv=list(c["argv"]),
            env={**os.environ, **c.get("env", {})},
            backoff=float(c.get("backoff", 1.0)),
        )
        for slot, c in enumerate(spec["children"])
    ]
    sys.exit(Supervisor(children, stop_timeout=30).run())


if __name__ == "__main__":
    main()
