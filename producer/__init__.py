"""vecq.producer: what a web app or a bulk job needs to send texts to vecq workers.

Installs with redis, rq, numpy, pydantic and msgpack only — never torch.
"""

from .contract import DEFAULT_MODEL, JOB_FUNCTION, LANES, EmbedRequest, queue_name, queue_names
from .errors import BadRequest, JobFailed, JobTimeout, QueueFull, RedisUnavailable, VecqError
from .serializer import MsgpackSerializer

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "JOB_FUNCTION",
    "LANES",
    "BadRequest",
    "EmbedRequest",
    "JobFailed",
    "JobTimeout",
    "MsgpackSerializer",
    "QueueFull",
    "RedisUnavailable",
    "VecqError",
    "queue_name",
    "queue_names",
]
