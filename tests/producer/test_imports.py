"""`vecq.producer` is what a web app installs: importing it must not pull the worker side."""

from __future__ import annotations

import subprocess
import sys


def test_producer_imports_no_model_code() -> None:
    code = (
        "import sys, vecq.producer\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'onnxruntime')"
        " or m.startswith(('vecq.engines', 'vecq.worker')))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_import_reads_no_environment() -> None:
    """Importing vecq.producer must not read VECQ_* (settings are read when a client is built)."""
    code = (
        "import os\n"
        "seen = []\n"
        "class Env(dict):\n"
        "    def get(self, k, d=None):\n"
        "        seen.append(k); return super().get(k, d)\n"
        "    def __getitem__(self, k):\n"
        "        seen.append(k); return super().__getitem__(k)\n"
        "os.environ = Env(os.environ)\n"
        "import vecq.producer\n"
        "print(','.join(k for k in seen if str(k).startswith('VECQ')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
