"""The README's "Use your own data" example runs as written (one training step instead of ten)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.dist
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def readme_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("## Use your own data", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


@pytest.mark.timeout(240)
def test_readme_own_data_example(tmp_path):
    script = readme_example()
    assert "hdp data prepare docs.jsonl" in script and "--steps 10" in script
    script = script.replace("--steps 10", "--steps 1 --no-progress")
    bin_dir = os.path.dirname(sys.executable)  # the hdp entry point of this environment
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"],
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(["bash", "-ec", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stderr
    assert "docs.store: 500 documents, 429,086 tokens (<u2), 1 empty skipped, tokenizer tok (68 ids)" in proc.stdout
    with open(tmp_path / "batches.jsonl") as f:
        (dump,) = [json.loads(line) for line in f]
    assert dump["step"] == 0 and sum(map(len, dump["documents"])) == 4096
    with open(tmp_path / "m.jsonl") as f:
        assert json.loads(f.readline())["loss"] > 0
