"""The README's runnable blocks, run as written against a live server.

A block preceded by ``<!-- runnable -->`` (``cwd=repo``: run from the repository root, otherwise
from a fresh folder holding a copy of docs/examples/news.csv) is run with ``.venv``'s commands on
PATH and ``SEMSERVE_TARGET`` pointing at a server hosting the bundled encoder and a tiny
cross-encoder; in Python blocks the documented address 127.0.0.1:50051 is replaced by the
server's. A shell command followed by ``# {...`` shows what it prints: the real output must
start with the shown text up to its first ``…``, where examples elide (scores and model names of
the tiny test cross-encoder differ from a real one, so only blocks that use the bundled encoder
show output).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEST_FRONTENDS, server_config, start_server
from semserve.config import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- runnable(?P<options>[^>]*)-->\n```(?P<language>sh|python)\n(?P<code>.*?)```", re.S)
DOCUMENTED_ADDRESS = "127.0.0.1:50051"


def runnable_blocks() -> list[tuple[str, str, str, int]]:
    text = (ROOT / "README.md").read_text()
    found = []
    for match in BLOCK.finditer(text):
        line = text[: match.start()].count("\n") + 1
        found.append((match["language"], match["code"], match["options"].strip(), line))
    return found


BLOCKS = runnable_blocks()


def test_the_readme_has_runnable_blocks():
    assert len(BLOCKS) >= 6, "README blocks marked <!-- runnable --> went missing"


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory):
    from model_factory import make_tiny_cross_encoder

    cross = make_tiny_cross_encoder(tmp_path_factory.mktemp("ce"), num_labels=1, seed=5)
    server = start_server(server_config(rerankers=[ModelSpec("ms-marco-MiniLM-L-6-v2", cross, "cross_encoder")]))
    yield server
    server.stop()


def shown_outputs(code: str) -> list[tuple[str, str]]:
    """(command, the start of what it prints) for each one-line command whose comment, on its line
    or alone on the next, shows JSON output (``# {...``)."""
    pairs = []
    lines = code.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.endswith("\\"):
            continue
        command, _, inline = line.partition("  #")
        comment = inline.strip()
        if not comment and i + 1 < len(lines) and lines[i + 1].strip().startswith("# {"):
            comment = lines[i + 1].strip()[1:].strip()
        if comment.startswith("{"):
            pairs.append((command.strip(), comment.split("…", 1)[0]))
    return pairs


@pytest.mark.parametrize("language,code,options,line", BLOCKS, ids=[f"README.md:{b[3]}" for b in BLOCKS])
def test_a_runnable_block_runs_as_written(readme_server, tmp_path, language, code, options, line):
    folder = ROOT if "cwd=repo" in options else tmp_path
    shutil.copy(ROOT / "docs" / "examples" / "news.csv", tmp_path / "news.csv")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "SEMSERVE_TARGET": readme_server.address, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "PYTHONPATH": f"{ROOT / 'server'}:{ROOT / 'client'}"}
    if language == "python":
        source = code.replace(DOCUMENTED_ADDRESS, readme_server.address)
        done = subprocess.run([sys.executable, "-c", source], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=240)
        assert done.returncode == 0, f"README.md:{line}\n{done.stderr}"
        return
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, f"README.md:{line}\n{done.stdout}\n{done.stderr}"
    for command, shown in shown_outputs(code):
        again = subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True,
                               timeout=120)
        assert again.stdout.startswith(shown), f"README.md:{line}: {command!r} printed {again.stdout[:200]!r}"
