"""The README's "From Python" section runs as written against a live server (only its URL and token change)."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def from_python_block() -> str:
    text = README.read_text()
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_from_python_section_runs_as_written(service):
    code = from_python_block()
    token = service.user("reader").session.headers["Authorization"].split()[1]
    assert 'TOKEN = "..."' in code and "http://127.0.0.1:8000" in code
    code = code.replace('TOKEN = "..."', f"TOKEN = {token!r}").replace("http://127.0.0.1:8000", service.base_url)
    printed, bar = io.StringIO(), io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(bar):
        exec(compile(code, str(README), "exec"), scope)
    assert scope["results"].accuracy_matrix.shape == (5, 5)
    assert "10/10" in bar.getvalue()  # the progress bar went to its end: 5 experiences x 2 epochs
    assert scope["version"] == 1 and len(scope["classes"]) == 3
    assert "400 " in printed.getvalue() and "training.epochs" in printed.getvalue()
