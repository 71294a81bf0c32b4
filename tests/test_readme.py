"""The README's example tests run as a user's suite would: they must pass."""

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_examples_pass(tmp_path):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "test_readme_example.py").write_text(block)
    run = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path), "-q", "-p",
                          "no:cacheprovider"], capture_output=True, text=True, timeout=120)
    assert "2 passed" in run.stdout, run.stdout + run.stderr
