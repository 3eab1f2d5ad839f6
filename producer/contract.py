"""The wire contract between producers and workers: names, limits, request schema.

Everything both sides must agree on lives here and only here.  A job is an ordinary rq job:
function `JOB_FUNCTION`, args `[texts]`, kwargs the request options, serialized with
`MsgpackSerializer`, on queue `keys.queue_name(model, lane)`.  Its result is a float32 array of shape
(len(texts), dim).

What a producer writes, per job (all chosen by rq's own enqueue, run as one script):
`rq:job:<id>` (rq's hash: meta `{META_KEY: WIRE_VERSION}`, rq `Retry`, result/failure TTLs),
an RPUSH of the id onto `rq:queue:<queue_name>`, SADD `rq:queues`, and INCRBY
`keys.queued_texts_key(model)` by len(texts).  It reads results from `rq:results:<id>` (rq's
stream).  Every key name is spelled in `keys.py`.
Bulk jobs have ids `vecq-bulk-<run_id>-<chunk:08d>`; the bulk submitter deletes each one (job,
result, finished-registry entry) after its caller has taken the vectors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import BadRequest
from .keys import LANES, Lane, model_name, queue_name

#: rq imports this to run a vecq job in a plain `rq worker`; vecq's BatchWorker recognises it.
JOB_FUNCTION = "vecq.worker.tasks.embed"
#: Jobs carry this in `job.meta`, so a worker can tell vecq's jobs from anything else.
META_KEY = "vecq"
WIRE_VERSION = 1
#: `job.meta[DEADLINE_KEY]`: the Unix time after which nobody waits for the job's result; a
#: worker that takes it later fails it (`DeadlineExceeded`) instead of computing it.
DEADLINE_KEY = "deadline"

DEFAULT_MODEL = "all-minilm-l6-v2"
MAX_TEXTS_PER_JOB = 4096
MAX_CHARS_PER_TEXT = 100_000
MAX_CHARS_PER_JOB = 4_000_000
#: A literal prompt (`EmbedRequest.prompt`) or prompt name, at most this many characters.
MAX_PROMPT_CHARS = 10_000
#: A rerank job's query (`EmbedRequest.query`), at most this many characters.
MAX_QUERY_CHARS = 10_000

# The queued-texts counter, `keys.queued_texts_key(model)`: texts waiting in a model's queue
# lists (both lanes).  Producers INCRBY it by len(texts) in the same atomic write as the enqueue; a
# worker DECRBYs it by len(texts) for each job it moves out of a queue list, and INCRBYs it when
# it pushes a job back (retry, requeue).  A counter rather than LLEN because a job holds
# 1..MAX_TEXTS_PER_JOB texts, so LLEN alone is off by up to 4096x; and it is O(1) to read.
# Producers treat it as an estimate: clamped to [jobs, jobs * MAX_TEXTS_PER_JOB] of the queue
# lists and reset to 0 whenever both lists are empty, so a worker that never decrements (a stock
# `rq worker`, a crash, an expired job) cannot wedge producers.

#: Job-hash field holding len(texts), written with the job: a worker's take counts texts from it,
#: so its prefetch budget holds whatever the sizes of the waiting jobs (jobs from producers that
#: do not write it are counted at the worker's running average).
TEXTS_FIELD = "vecq_texts"

ResultDtype = Literal["float32", "float16"]
ResultEncoding = Literal["rq", "raw"]
#: numpy's little-endian name of each result dtype.
RESULT_DTYPES: dict[str, str] = {"float32": "<f4", "float16": "<f2"}
#: A "raw" result entry holds the vectors' bytes here, and "n,dim,<numpy dtype>" in `SHAPE_FIELD`,
#: instead of rq's `return_value` (which stock rq's `Result` then reads as None).
VECTORS_FIELD = "vecq_vectors"
SHAPE_FIELD = "vecq_shape"


def texts_fault(texts: Any) -> str | None:
    """The one line naming the first rule `texts` breaks (type, count, length, total), or None.

    Plain Python and no strings built when all is well: the worker runs it on every job it
    takes.  Encoding is not checked here (`check_texts` does): a str decoded from msgpack is
    always valid UTF-8."""
    if not isinstance(texts, (list, tuple)):
        return f"texts: expected a list of str, got {type(texts).__name__}"
    if not texts:
        return "texts: empty list (send at least one text)"
    if len(texts) > MAX_TEXTS_PER_JOB:
        return f"texts: {len(texts)} texts in one job, over the limit of {MAX_TEXTS_PER_JOB}"
    if all(type(t) is str for t in texts):  # the usual case, in C-speed passes over the list
        lengths = list(map(len, texts))
        if max(lengths) <= MAX_CHARS_PER_TEXT and sum(lengths) <= MAX_CHARS_PER_JOB:
            return None
    total = 0
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            return f"texts[{i}]: expected str, got {type(t).__name__}"
        if len(t) > MAX_CHARS_PER_TEXT:
            return f"texts[{i}]: {len(t)} characters, over the limit of {MAX_CHARS_PER_TEXT}"
        total += len(t)
    if total > MAX_CHARS_PER_JOB:
        return f"texts: {total} characters in one job, over the limit of {MAX_CHARS_PER_JOB}"
    return None


def check_texts(texts: Any) -> list[str]:
    """Refuse unusable texts with one line naming the first bad item and the limit it breaks."""
    fault = texts_fault(texts)
    if fault is not None:
        raise BadRequest(fault)
    try:
        "".join(texts).encode("utf-8")  # one call; only a lone surrogate fails it
    except UnicodeEncodeError:
        for i, t in enumerate(texts):
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BadRequest(f"texts[{i}]: not valid Unicode ({exc.reason} at {exc.start})") from None
    return list(texts)


class EmbedRequest(BaseModel):
    """One job's request, validated on submit and again in the worker (Redis is not trusted)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    texts: list[str] = Field(min_length=1)
    model: str = DEFAULT_MODEL
    lane: Lane = "interactive"
    #: True: cut texts over the model's max length (sentence-transformers' behaviour).
    #: False: fail the job with `TextTooLong` instead.
    truncate: bool = True
    #: The vectors' dtype in Redis: float16 halves the bytes every result moves (cosine >= 0.9999
    #: to float32); producers hand back float32 either way.
    result_dtype: ResultDtype = "float32"
    #: "rq": rq's own return value (base64 of vecq's msgpack array), which stock rq tools read;
    #: "raw": the vectors' little-endian bytes in `VECTORS_FIELD`, read with one `np.frombuffer`
    #: and a third smaller -- what bulk runs use.
    result_encoding: ResultEncoding = "rq"
    #: One of the model's sentence-transformers prompts, by name (`prompts` in its
    #: config_sentence_transformers.json), prepended to each text by the worker before tokenizing;
    #: None: the model's `default_prompt_name`, if it has one.  A name the model lacks fails the job.
    prompt_name: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    #: A literal prompt instead ("" : none, not even the default); not with `prompt_name`.
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    #: Matryoshka: keep the first `dimensions` components of each vector (sentence-transformers'
    #: `truncate_dim`); the worker refuses a size over the model's.
    dimensions: int | None = Field(default=None, ge=1)
    #: A rerank job: the query each text is scored against by a cross-encoder worker, whose result
    #: is (len(texts), 1) float32 scores in text order; None: an embedding job.
    query: str | None = Field(default=None, min_length=1, max_length=MAX_QUERY_CHARS)

    @field_validator("texts", mode="before")
    @classmethod
    def _texts(cls, v: Any) -> list[str]:
        return check_texts(v)

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any) -> str:
        return model_name(v)

    @model_validator(mode="after")
    def _one_prompt(self) -> EmbedRequest:
        if self.prompt is not None and self.prompt_name is not None:
            raise BadRequest("prompt: give prompt or prompt_name, not both")
        return self

    @property
    def queue(self) -> str:
        return queue_name(self.model, self.lane)

    def job_kwargs(self) -> dict[str, Any]:
        """The rq kwargs of this request (everything but the texts, which are the one arg); the
        result options only when not their defaults, so jobs that need none stay readable by
        workers that predate them."""
        kwargs: dict[str, Any] = {"model": self.model, "lane": self.lane, "truncate": self.truncate}
        if self.result_dtype != "float32":
            kwargs["result_dtype"] = self.result_dtype
        if self.result_encoding != "rq":
            kwargs["result_encoding"] = self.result_encoding
        for name in MODEL_OPTIONS:  # only when given: jobs without them read as they always did
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        return kwargs


#: Options the worker resolves against its model (prompts, Matryoshka size); absent in jobs
#: from producers that predate them, which mean "the model's default prompt, full size".
MODEL_OPTIONS = ("prompt_name", "prompt", "dimensions", "query")
OPTION_NAMES = frozenset({"model", "lane", "truncate", "result_dtype", "result_encoding", *MODEL_OPTIONS})


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What a worker needs of a job's request once it is checked."""

    texts: list[str]
    truncate: bool = True
    result_dtype: str = "float32"
    raw: bool = False  # result_encoding "raw"
    prompt_name: str | None = None
    prompt: str | None = None
    dimensions: int | None = None
    query: str | None = None  # a rerank job's

    @classmethod
    def of(cls, request: EmbedRequest) -> JobRequest:
        return cls(
            request.texts, request.truncate, request.result_dtype, request.result_encoding == "raw",
            request.prompt_name, request.prompt, request.dimensions, request.query,
        )  # fmt: skip


def parse_request(args: Sequence[Any], kwargs: Mapping[str, Any]) -> EmbedRequest:
    """Rebuild and validate a request from a job's args/kwargs, raising `BadRequest` in one line."""
    if not isinstance(args, (list, tuple)) or len(args) != 1:
        raise BadRequest("job args: expected exactly one argument, the list of texts")
    if not isinstance(kwargs, Mapping):
        raise BadRequest(f"job kwargs: expected a map of options, got {type(kwargs).__name__}")
    unknown = sorted(str(k) for k in kwargs if k not in OPTION_NAMES)
    if unknown:
        raise BadRequest(
            f"options: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTION_NAMES))}"
        )
    return build_request(args[0], **kwargs)


def fast_request(args: Any, kwargs: Any, *, model: str) -> JobRequest | None:
    """The request of a well-formed job for `model` from msgpack-decoded job args, checked in
    plain Python (~20x cheaper than `parse_request`, which a worker needs for every job it
    takes); None for anything unusual, which `parse_request` then decides on and words."""
    if type(args) is not list or len(args) != 1 or type(kwargs) is not dict:
        return None
    texts = args[0]
    if type(texts) is not list or texts_fault(texts) is not None or not kwargs.keys() <= OPTION_NAMES:
        return None
    get = kwargs.get
    truncate, dtype, encoding = (
        get("truncate", True),
        get("result_dtype", "float32"),
        get("result_encoding", "rq"),
    )
    if get("model", DEFAULT_MODEL) != model or get("lane", "interactive") not in LANES:
        return None
    if type(truncate) is not bool or dtype not in RESULT_DTYPES or encoding not in ("rq", "raw"):
        return None
    name, prompt, dimensions, query = get("prompt_name"), get("prompt"), get("dimensions"), get("query")
    if name is None and prompt is None and dimensions is None and query is None:
        return JobRequest(texts, truncate, dtype, encoding == "raw")
    if name is not None and prompt is not None:
        return None
    if not (_short_str(name, empty=False) and _short_str(prompt, empty=True)):
        return None
    if not _short_str(query, empty=False, limit=MAX_QUERY_CHARS):
        return None
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        return None
    return JobRequest(texts, truncate, dtype, encoding == "raw", name, prompt, dimensions, query)


def _short_str(value: Any, *, empty: bool, limit: int = MAX_PROMPT_CHARS) -> bool:
    """None, or a str within `limit` characters (and not "" unless `empty`)."""
    return value is None or (type(value) is str and (empty or value != "") and len(value) <= limit)


def build_request(texts: Any, **options: Any) -> EmbedRequest:
    """`EmbedRequest(texts=..., **options)` with pydantic's errors folded into one `BadRequest` line."""
    try:
        return EmbedRequest(texts=texts, **options)
    except BadRequest:
        raise
    except ValidationError as exc:
        raise BadRequest(one_line(exc)) from None
    except TypeError as exc:
        raise BadRequest(str(exc)) from None


def one_line(exc: ValidationError, *, unnamed: str = "request") -> str:
    """`field[index]: message` for the first error of a pydantic ValidationError (`unnamed`
    stands for the field of an error about the whole object)."""
    err = exc.errors(include_url=False)[0]
    loc = location(err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if loc and msg.startswith(loc) and msg[len(loc) : len(loc) + 1] in (":", "["):
        return msg
    if not loc and msg.split(":", 1)[0] in EmbedRequest.model_fields:  # a check across fields
        return msg
    return f"{loc or unnamed}: {msg}"


def location(loc: Sequence[int | str]) -> str:
    """A pydantic error location as vecq's messages name fields: `texts[3]`, `options.lane`."""
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
