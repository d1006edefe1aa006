"""Issue 11 item 10: every user-side failure of `otov3 search` is one `otov3: error: ...` line naming the cause,
with exit status 2; integer dummy inputs (token ids) and constructor arguments can be given on the command line."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from otov3.cli.main import main

_COUNTER = itertools.count()

TOKEN_NET = """
import torch
from torch import nn

class Tok(nn.Module):
    def __init__(self, vocab, width=1.0):
        super().__init__()
        d = int(16 * width)
        self.emb = nn.Embedding(vocab, d)
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)
        self.head = nn.Linear(d, 3)

    def forward(self, ids):
        z = self.emb(ids)
        return self.head(torch.relu(self.a(z)) + torch.relu(self.b(z)))

class Picky(nn.Module):
    def __init__(self, width=1.0):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x)

class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: neither capture backend can follow it
            return self.a(x)
        return self.b(x).view(3, 7)

def not_a_model():
    return 42
"""


def _module(tmp_path: Path, monkeypatch, source: str) -> str:
    """A fresh module name (imports are cached per name) holding `source`, importable from the cwd."""
    name = f"cli_user_{next(_COUNTER)}_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.chdir(tmp_path)
    return name


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("otov3: error: ")
    return lines[0]


@pytest.mark.parametrize(("source", "pattern"), [
    ("raise RuntimeError('no GPU on this machine')\n",
     r"importing module '\w+' raised RuntimeError: no GPU on this machine"),
    ("def broken(:\n    pass\n", r"module '\w+' has a syntax error: .* \(.*\.py, line 1\)"),
    ("import no_such_dependency_xyz\n", r"cannot import module '\w+': No module named 'no_such_dependency_xyz'"),
])
def test_a_user_module_that_cannot_be_imported_is_one_error_line(source, pattern, tmp_path, monkeypatch, capsys):
    name = _module(tmp_path, monkeypatch, source)
    assert main(["search", f"{name}:Net", "--input-shape", "1,4"]) == 2
    line = _error(capsys)
    assert re.search(pattern, line), line


@pytest.mark.parametrize(("target", "args", "pattern"), [
    ("Picky", ["--kwargs", '{"width": -1}'], r"Picky\(width=-1\) raised ValueError: width must be positive, got -1"),
    ("Tok", [], r"Tok\(\) cannot be built: TypeError: .*vocab.*; pass constructor arguments with --kwargs"),
    ("Tok", ["--kwargs", "{width: 1}"], r"--kwargs must be a JSON object such as .*got '\{width: 1\}'"),
    ("Tok", ["--kwargs", "[1, 2]"], r"--kwargs must be a JSON object .*got list"),
    ("not_a_model", [], r"not_a_model\(\) returned int, not a torch\.nn\.Module"),
    ("Missing", [], r"module '\w+' has no attribute 'Missing'"),
    ("Tok", ["--kwargs", '{"vocab": 100}', "--input-dtype", "int64"],
     r"--input-dtype int64 needs --input-range LOW,HIGH \(e\.g\. 0,VOCAB for token ids\)"),
    ("Tok", ["--kwargs", '{"vocab": 100}', "--input-dtype", "long"], r"--input-dtype 'long' is unknown; choose one of"),
    ("Tok", ["--kwargs", '{"vocab": 100}', "--input-dtype", "int64", "--input-range", "5"],
     r"--input-range must be LOW,HIGH \(two numbers\), got '5'"),
    ("Tok", ["--kwargs", '{"vocab": 100}', "--input-dtype", "int64", "--input-range", "0,1000"],
     r"Running the dummy input failed|index out of range|IndexError"),
    ("Broken", [], r"Neither capture backend could capture Broken"),
])
def test_user_side_failures_are_one_line_with_status_2(target, args, pattern, tmp_path, monkeypatch, capsys):
    name = _module(tmp_path, monkeypatch, TOKEN_NET)
    assert main(["search", f"{name}:{target}", "--input-shape", "2,5", *args]) == 2
    line = _error(capsys)
    assert re.search(pattern, line), line


def test_token_ids_and_constructor_arguments_from_the_command_line(tmp_path, monkeypatch, capsys):
    name = _module(tmp_path, monkeypatch, TOKEN_NET)
    argv = ["search", f"{name}:Tok", "--input-shape", "2,5", "--input-dtype", "int64", "--input-range", "0,100",
            "--kwargs", '{"vocab": 100, "width": 0.5}']
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 GeZIGs" in out and "emb" in out


def test_an_out_path_that_is_a_file_is_one_error_line(tmp_path, monkeypatch, capsys):
    name = _module(tmp_path, monkeypatch, TOKEN_NET)
    (tmp_path / "taken").write_text("")
    argv = ["search", f"{name}:Tok", "--input-shape", "2,5", "--input-dtype", "int64", "--input-range", "0,100",
            "--kwargs", '{"vocab": 100}', "--out", str(tmp_path / "taken")]
    assert main(argv) == 2
    assert "cannot write into --out" in _error(capsys)


def test_the_installed_command_prints_one_line_and_exits_2_for_a_model_error(tmp_path):
    (tmp_path / "cli_broken_model.py").write_text(textwrap.dedent(TOKEN_NET))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "otov3.cli.main", "search", "cli_broken_model:Broken",
                           "--input-shape", "2,4"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("otov3: error: Neither capture backend could capture Broken"), \
        done.stderr


def test_torchs_debugging_notes_are_left_out_of_the_error_line():
    from otov3.cli.main import _one_line

    message = ("Running the dummy input failed at node 'emb': index out of range in self.\n\nWhile executing %emb : "
               "[num_users=2] = call_module[target=emb](args = (%ids,), kwargs = {})\nOriginal traceback:\nNone\n"
               "Use tlparse to see full graph. (https://github.com/pytorch/tlparse?tab=readme)\nWhat to try: x. "
               "For more information, run with TORCH_LOGS=\"dynamic\" Caused by: (a.py:1 in f) end")
    assert _one_line(message) == ("Running the dummy input failed at node 'emb': index out of range in self. "
                                  "What to try: x. end")
