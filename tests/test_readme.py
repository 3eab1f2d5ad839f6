"""The README's two set-up commands: what a new user copies, and what `.ci/run` runs.

`.ci/run` cuts the test command out of the README at run time, so the two cannot drift; what can
break is the README itself (a block lost, a second line, torch installed after the worker extra
so that pip pulls a CUDA build, a sample file renamed).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def block(name: str) -> str:
    """The one command between `<!-- name -->` and `<!-- /name -->` (in a ``` fence)."""
    found = re.findall(rf"<!-- {name} -->\n```\n(.*?)\n```\n<!-- /{name} -->", README, flags=re.S)
    assert len(found) == 1, f"README needs exactly one {name} block, found {len(found)}"
    assert "\n" not in found[0], f"the {name} is one line"
    return found[0]


def test_both_commands_install_the_cpu_torch_first() -> None:
    for name in ("main-command", "test-command"):
        assert block(name).startswith("pip install torch==2.13.0 && pip install -e "), name


def test_the_main_command_embeds_a_file_shipped_in_the_repo() -> None:
    steps = [shlex.split(step) for step in block("main-command").split(" && ")]
    embed = steps[-1]
    assert embed[:2] == ["vecq", "embed"] and "--redis" not in embed  # embedded: no Redis needed
    assert (ROOT / embed[2]).is_file(), embed[2]
    assert steps[1][-1] == ".[worker]"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    extract = re.search(r"cmd=\$\((.*)\)\n", script)
    assert extract, ".ci/run no longer reads the test command from the README"
    got = subprocess.run(
        ["bash", "-c", extract.group(1)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert got.stdout.strip() == block("test-command")
    assert block("test-command").endswith("&& pytest")  # the whole suite, nothing deselected
