"""vecq.producer: what a web app or a bulk job needs to send texts to vecq workers.

Installs with redis, rq, numpy, pydantic and msgpack only — never torch.
"""

from .async_client import AsyncClient
from .bulk import BulkStats, BulkSubmitter
from .client import Client
from .connection import mask_url
from .contract import DEFAULT_MODEL, JOB_FUNCTION, EmbedRequest
from .errors import (
    BadRequest,
    JobFailed,
    JobNotFound,
    JobTimeout,
    QueueFull,
    RedisUnavailable,
    VecqError,
)
from .keys import LANES, queue_name, queue_names
from .rerank import RerankResult
from .serializer import MsgpackSerializer
from .settings import ProducerSettings
from .similarity import similarity

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "JOB_FUNCTION",
    "LANES",
    "AsyncClient",
    "BadRequest",
    "BulkStats",
    "BulkSubmitter",
    "Client",
    "EmbedRequest",
    "JobFailed",
    "JobNotFound",
    "JobTimeout",
    "MsgpackSerializer",
    "ProducerSettings",
    "QueueFull",
    "RedisUnavailable",
    "RerankResult",
    "VecqError",
    "mask_url",
    "queue_name",
    "queue_names",
    "similarity",
]
