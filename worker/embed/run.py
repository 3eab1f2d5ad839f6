"""`vecq embed`: a corpus file in, a vector file out, through Redis and vecq's workers.

Texts go out as chunked bulk jobs (`BulkSubmitter`: deterministic job ids, a bounded window,
results deleted once written); rows land by chunk index in a resumable work area, so a killed
run started again skips finished chunks and ends with the same file.  Without a Redis URL the run
is embedded: a private server plus an in-process BatchWorker with the default model on CPU,
both stopped however the run ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vecq.engines import backends
from vecq.engines.embedder import locate_model
from vecq.producer import Client
from vecq.producer.bulk import BulkSubmitter
from vecq.producer.contract import DEFAULT_MODEL, MAX_TEXTS_PER_JOB, ResultDtype
from vecq.producer.keys import model_name

from ..settings import WorkerSettings
from . import reuse
from .files import WorkArea, check_output, run_id, write_atomically
from .formats import Corpus, read_corpus
from .reuse import Provenance, check_reuse_file, stamp, text_hashes

log = logging.getLogger(__name__)


class EmbedSettings(BaseModel):
    """One `vecq embed` run; the command's options are made from these fields (a field's
    description is its `--help` line), so the two cannot drift apart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Path = Field(description="Corpus file: .txt (one text per line), .jsonl, .csv, .parquet.")
    out: Path = Field(description="Vector file to write: .npy or .parquet.")
    redis_url: str | None = Field(
        default=None,
        description="Use this Redis and its workers instead of embedded mode.",
        json_schema_extra={"flag": "--redis"},
    )
    bundle: Path | None = Field(default=None, description="Bundle dir (embedded worker).")
    model: Path | None = Field(default=None, description="Model dir (embedded worker).")
    backend: str | None = Field(
        default=None,
        description="Embedded worker's backend (default: onnx on CPU).",
        json_schema_extra={"choices": list(backends.names())},
    )
    device: str = Field(default="cpu", description="Embedded worker's device.")
    precision: Literal["fp32", "int8"] | None = Field(
        default=None,
        description="Embedded onnx worker on a model dir: int8 is ~1.7x fp32 on a CPU with VNNI "
        "(less without), cosine >= 0.99 to fp32.",
    )
    name: str | None = Field(
        default=None,
        description="Model (queue) name: with --redis, the workers' model; embedded, a name for --model "
        "or --bundle (it never picks a model: alone, it is refused).",
    )
    text_field: str = Field(default="text", description=".jsonl/.csv/.parquet text field.")
    id_field: str | None = Field(
        default=None,
        description=".jsonl/.csv/.parquet id field, written beside each vector in .parquet (a .npy "
        "output, vectors only, is refused).",
    )
    chunk_size: int = Field(default=256, ge=1, le=MAX_TEXTS_PER_JOB, description="Texts per job.")
    window: int = Field(default=32768, ge=1, description="Texts in flight, at most.")
    result_dtype: ResultDtype = Field(
        default="float32",
        description="Vectors' dtype in Redis: float16 halves the bytes results move (cosine >= 0.9999); "
        "the output file is float32 either way.",
    )
    prompt_name: str | None = Field(
        default=None,
        description="One of the model's prompts (config_sentence_transformers.json), prepended to "
        "each text (default: the model's default prompt, if any).",
    )
    prompt: str | None = Field(
        default=None, description="A literal prompt prepended to each text instead ('' for none)."
    )
    dimensions: int | None = Field(
        default=None, ge=1, description="Keep each vector's first N components (Matryoshka)."
    )
    reuse: Path | None = Field(
        default=None,
        description="A .parquet an earlier run wrote: copy the vectors of texts unchanged since "
        "(same model, prompt, dimensions and text), embed only new or changed ones.",
    )
    progress: bool = True
    stall_timeout: float | None = 600.0

    @model_validator(mode="after")
    def _consistent(self) -> EmbedSettings:
        if self.bundle is not None and self.model is not None:
            raise ValueError("pass --bundle or --model, not both")
        if self.prompt is not None and self.prompt_name is not None:
            raise ValueError("pass --prompt or --prompt-name, not both")
        if self.reuse is not None and self.out.suffix.lower() != ".parquet":
            raise ValueError(
                f"--reuse needs a .parquet --out (it keeps the text hashes), not {self.out.name}"
            )
        if self.window < self.chunk_size:
            raise ValueError(f"window: {self.window} texts is smaller than one chunk ({self.chunk_size})")
        embedded_default = self.redis_url is None and self.model_path is None
        if embedded_default and self.name is not None and model_name(self.name) != DEFAULT_MODEL:
            raise ValueError(  # --name names the queue; it never picks a model
                f"--name {self.name!r} names the queue, not the model: embedded, it would embed with "
                f"the default {DEFAULT_MODEL} under that name; pass --model (a model dir or a cached "
                "Hugging Face id) or --bundle, or --redis for workers serving it"
            )
        return self

    @property
    def model_path(self) -> Path | None:
        return self.bundle or self.model

    @property
    def model_options(self) -> dict[str, str | int | None]:
        """What every job asks of the model beyond its texts (the prompt, the size)."""
        return {"prompt_name": self.prompt_name, "prompt": self.prompt, "dimensions": self.dimensions}


@dataclass(frozen=True)
class EmbedReport:
    rows: int
    dim: int
    chunks_computed: int
    chunks_resumed: int
    seconds: float
    #: rows an earlier run had written (in `chunks_resumed`): in the file, not in the rate
    rows_resumed: int = 0
    #: rows copied from `--reuse`'s file: in the file, not computed, not in the rate
    rows_reused: int = 0
    #: texts sent to the queue by this run (distinct new or changed ones, with `--reuse`)
    texts_sent: int = 0

    @property
    def texts_per_second(self) -> float:
        """Texts embedded per second by this run: rows resumed from an earlier one cost it
        nothing, so counting them made a resumed run look faster than any run can be."""
        computed = self.rows - self.rows_resumed - self.rows_reused
        return computed / self.seconds if self.seconds > 0 else 0.0


def embed_file(job: EmbedSettings) -> EmbedReport:
    """Run one corpus through vecq and write `job.out`."""
    check_output(job.out, ids=job.id_field is not None)
    if job.reuse is not None:
        check_reuse_file(job.reuse)
    if job.redis_url is None and job.model_path is not None:
        locate_model(job.model_path)  # a model that is not there: before the corpus is read
    corpus = read_corpus(job.input, text_field=job.text_field, id_field=job.id_field)
    if corpus.size == 0:
        raise ValueError(f"{job.input}: no texts")
    started = time.perf_counter()
    with _service(job) as (url, model, check):
        provenance = Provenance(model, **job.model_options)  # type: ignore[arg-type]
        parquet = job.out.suffix.lower() == ".parquet"
        hashes = text_hashes(corpus.texts, provenance) if parquet else []
        if job.reuse is not None:
            report = _embed_reusing(job, url, model, check, corpus, hashes, provenance)
        else:
            run = run_id(job.input, model=model, chunk_size=job.chunk_size, options=job.model_options)
            area, computed, done = _embed(job, url, model, check, corpus.texts, run)
            area.finish(job.out, corpus.ids, stamp(hashes, provenance) if parquet else None)
            rows_resumed = area.rows_in(done)
            report = EmbedReport(
                corpus.size, area.dim or 0, computed, len(done), 0.0, rows_resumed,
                texts_sent=corpus.size - rows_resumed,
            )  # fmt: skip
    return dataclasses.replace(report, seconds=time.perf_counter() - started)


def _embed(
    job: EmbedSettings, url: str, model: str, check: Callable[[], None] | None, texts: list[str], run: str
) -> tuple[WorkArea, int, set[int]]:
    """Texts through the queue into a work area: (the area, chunks computed, chunks resumed)."""
    area = WorkArea(job.out, run=run, rows=len(texts), chunk_size=job.chunk_size)
    done = area.done_chunks()
    if done:
        log.info("resuming %s: %d of %d chunks already written", job.out, len(done), area.chunks)
    return area, _run_chunks(job, url, model, texts, area, check), done


def _embed_reusing(
    job: EmbedSettings,
    url: str,
    model: str,
    check: Callable[[], None] | None,
    corpus: Corpus,
    hashes: list[bytes],
    provenance: Provenance,
) -> EmbedReport:
    """Copy the vectors `job.reuse` has, embed the distinct texts it lacks, write both in order."""
    assert job.reuse is not None, "_embed_reusing without --reuse (vecq bug)"
    p = reuse.plan(job.reuse, corpus.texts, hashes, provenance)
    log.info("%s: %d of %d texts reused, %d to embed", job.reuse, p.rows_reused, p.rows, len(p.todo))
    area: WorkArea | None = None
    computed, done, resumed_rows, vectors = 0, set(), 0, None
    if p.todo:  # the run id covers what is to embed, so a killed run resumes only the same work
        run = hashlib.sha256(b"".join(hashes[r] for r in p.todo_rows) + str(job.chunk_size).encode())
        area, computed, done = _embed(job, url, model, check, p.todo, "reuse-" + run.hexdigest()[:16])
        resumed_rows, vectors = area.rows_in(done), area.vectors()
    full = reuse.assemble(p, vectors)
    write_atomically(job.out, full, corpus.ids, stamp(hashes, provenance))
    if area is not None:
        area.drop()
    return EmbedReport(
        p.rows, full.shape[1], computed, len(done), 0.0, rows_resumed=resumed_rows,
        rows_reused=p.rows_reused, texts_sent=len(p.todo) - resumed_rows,
    )  # fmt: skip


def _run_chunks(
    job: EmbedSettings,
    url: str,
    model: str,
    texts: list[str],
    area: WorkArea,
    check: Callable[[], None] | None,
) -> int:
    from tqdm import tqdm

    skip = area.done_chunks()
    client = Client(url)
    submitter = BulkSubmitter(
        client, run_id=area.run, model=model, chunk_size=job.chunk_size, window=job.window,
        result_dtype=job.result_dtype, **job.model_options,  # type: ignore[arg-type]
    )  # fmt: skip
    bar = tqdm(
        total=len(texts),
        initial=area.rows_in(skip),
        unit="text",
        disable=None if job.progress else True,
        desc=job.out.name,
        smoothing=0.1,
    )
    computed = 0
    try:
        for chunk, vectors in submitter.run(texts, skip=skip, check=check):
            area.write(chunk, vectors)
            computed += 1
            bar.update(len(vectors))
    finally:
        bar.close()
        client.close()
    return computed


@contextlib.contextmanager
def _service(job: EmbedSettings) -> Iterator[tuple[str, str, Callable[[], None] | None]]:
    """(redis URL, model name, liveness check): the given Redis, or an embedded server with a
    worker of our own whose death ends the run at once instead of after the stall timeout."""
    if job.redis_url is not None:
        if job.precision is not None:
            raise ValueError("--precision applies to the embedded worker; with --redis the workers decide")
        yield job.redis_url, model_name(job.name or DEFAULT_MODEL), None
        return
    from .server import embedded_redis

    with embedded_redis() as url, _in_process_worker(job, url) as (model, check):
        yield url, model, check


@contextlib.contextmanager
def _in_process_worker(job: EmbedSettings, url: str) -> Iterator[tuple[str, Callable[[], None]]]:
    from ..worker import BatchWorker

    settings = WorkerSettings(
        redis_url=url,
        bundle=job.model_path,
        backend=job.backend,
        device=job.device,
        precision=job.precision,
        name=job.name,
        lanes=("bulk",),
        max_wait_ms=2.0,
    )
    worker = BatchWorker.from_settings(settings)
    # rq gives its worker logger a level of its own (INFO); the user's --log-level governs here.
    worker.log.setLevel(max(worker.log.getEffectiveLevel(), logging.getLogger().getEffectiveLevel()))
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            worker.work(burst=False)
        except BaseException as exc:  # reported to the caller, never swallowed
            log.error("embedded worker died: %s: %s", type(exc).__name__, exc)
            failure.append(exc)

    def check() -> None:
        if failure:
            raise RuntimeError(f"embedded worker failed: {failure[0]}") from failure[0]
        if not thread.is_alive():
            raise RuntimeError("embedded worker stopped unexpectedly")

    thread = threading.Thread(target=serve, name="vecq-embedded-worker", daemon=True)
    thread.start()
    try:
        yield worker.model, check
    finally:
        worker.stop()
        thread.join(timeout=30)
        if failure:
            raise RuntimeError(f"embedded worker failed: {failure[0]}") from failure[0]
