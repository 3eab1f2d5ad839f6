"""The command line's options are the settings' fields: derived, and passed on to `--gpus` children."""

from __future__ import annotations

import click
import pytest

from vecq.worker.cli.embed import embed
from vecq.worker.cli.options import to_args
from vecq.worker.cli.worker import PER_CHILD, worker
from vecq.worker.embed import EmbedSettings
from vecq.worker.settings import WorkerSettings


def _options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name}


@pytest.mark.parametrize(
    ("command", "settings", "extra"),
    [
        (worker, WorkerSettings, {"gpus", "workers_per_gpu", "log_level"}),
        (embed, EmbedSettings, {"log_level"}),
    ],
)
def test_every_settings_field_is_an_option_with_its_description(command, settings, extra) -> None:
    options = _options(command)
    hidden = {"input", "progress", "stall_timeout"}  # embed: INPUT is the argument; the rest API-only
    fields = {name for name in settings.model_fields if name not in hidden}
    assert set(options) == fields | extra
    for name in fields:
        assert options[name].help == settings.model_fields[name].description, name


def test_a_supervisor_passes_every_given_setting_on_to_its_children() -> None:
    """`--gpus` rebuilds each child's flags from the settings it parsed: every kind of field,
    a False flag included (`--serial-tokenize` was once dropped, leaving the child on auto)."""
    given = {
        "redis_url": "redis://10.0.0.1:6379/2",
        "backend": "null",
        "lanes": ("bulk",),
        "max_wait_ms": 2.5,
        "prefetch_texts": 99,
        "parallel_tokenize": False,
        "burst": True,
        "device": "cuda:0",
        "worker_name": "w",
    }
    args = to_args(WorkerSettings, given, skip=PER_CHILD)
    assert "--serial-tokenize" in args and "--device" not in args and "--worker-name" not in args
    ctx = worker.make_context("worker", args)
    parsed = {k: v for k, v in ctx.params.items() if v is not None and k in WorkerSettings.model_fields}
    expected = {k: v for k, v in given.items() if k not in PER_CHILD}
    assert WorkerSettings(**parsed) == WorkerSettings(**expected)


def test_a_worker_without_a_bundle_serves_onnx_on_cpu_and_torch_on_a_gpu(tmp_path) -> None:
    """The fastest measured backend by default (a cached ONNX bundle on CPU, as `vecq embed`
    serves), a bundle's own backend for a bundle, and what was asked for when it was."""
    from vecq.engines.backends.onnx import physical_cores

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    assert WorkerSettings().engine_backend() == "onnx"
    assert WorkerSettings(device="cuda:0").engine_backend() == "torch"
    assert WorkerSettings(bundle=bundle).engine_backend() is None
    assert WorkerSettings(backend="torch").engine_backend() == "torch"
    assert WorkerSettings().engine_options() == {"threads": physical_cores()}
    assert WorkerSettings(threads=3, precision="int8").engine_options() == {"threads": 3, "precision": "int8"}
    assert WorkerSettings(device="cuda:0").engine_options() == {}
    with pytest.raises(ValueError, match="a bundle has its own"):
        WorkerSettings(bundle=bundle, precision="int8").engine_options()
