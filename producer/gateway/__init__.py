"""`vecq gateway`: the OpenAI-compatible HTTP front of the producer (needs `vecq[gateway]`).

`app` builds the FastAPI app (`create_app`), `settings` holds `GatewaySettings`; `guard` the API
keys and the body limit that answer before any route; `openai_errors` the error shape every refusal
takes; `served` which models may be queued; `usage` the token counts.  The waiting itself is the
producer's `AsyncClient` and its `ResultHub`: the gateway is one client among others.
"""

from .app import create_app
from .settings import GatewaySettings, canonical_model

__all__ = ["GatewaySettings", "canonical_model", "create_app"]
