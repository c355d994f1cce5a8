"""The shape of the code: short functions and modules, branching on modality and output
type only inside kerasft/tasks, private APIs only in kerasft/_compat.py, FLAGS only in
entry points, and the test suite leaves the checkout as it found it."""

import ast
import os
import pathlib
import re
import subprocess

import pytest

from conftest import REPO

PACKAGE = pathlib.Path(REPO) / "kerasft"
SOURCES = sorted(PACKAGE.rglob("*.py"))
ENTRY_POINTS = {"train.py", "evaluate.py", "predict.py", "export.py", "cli.py"}


def _lines(path):
  return path.read_text().splitlines()


def test_no_function_over_60_lines_and_no_module_over_400():
  too_long = []
  for path in SOURCES:
    if len(_lines(path)) > 400:
      too_long.append(f"{path.name}: {len(_lines(path))} lines")
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > 60:
          too_long.append(f"{path.name}:{node.lineno} {node.name} {length} lines")
  assert not too_long, too_long


# Comparing modality or task names, or asking "is this text?", outside kerasft/tasks.
_BRANCHING = re.compile(r"is_text|task\s*[!=]=|==\s*\"(multiclass|multilabel|regression)\"|"
                        r"\"(multilabel|regression)\"\s*(?:if|else|in)|[!=]=\s*\"keras_hub:|startswith\(\"keras_hub:")


def test_modality_and_task_branching_lives_in_the_task_objects():
  found = []
  for path in SOURCES:
    if "tasks" in path.parts:
      continue
    for number, line in enumerate(_lines(path), 1):
      if _BRANCHING.search(line):
        found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
  assert not found, found


def test_private_keras_and_tensorflow_apis_only_in_compat():
  private = re.compile(r"keras\.src|tensorflow\.python|\._(call_context_args|initial_epoch|"
                       r"track_variable|backend_update_step|apply_weight_decay)\b|"
                       r"getattr\([^,]+, \"_")
  found = [f"{p.name}:{n}" for p in SOURCES if p.name != "_compat.py"
           for n, line in enumerate(_lines(p), 1) if private.search(line)]
  assert not found, found


def test_flags_are_read_only_in_entry_points():
  found = [p.name for p in SOURCES if "FLAGS." in p.read_text() and p.name not in ENTRY_POINTS]
  assert not found, found


@pytest.mark.skipif(not os.path.isdir(os.path.join(REPO, ".git")), reason="not a git checkout")
def test_the_checkout_has_no_files_from_tests():
  """Tests write only into temporary folders (run last by name: tests/test_structure.py
  sorts after most files; CI also checks `git status` after the whole suite)."""
  status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout
  written = [line for line in status.splitlines()
             if re.search(r"(^|/)(runs|eval|saved_models)/|\.tmp$", line)]
  assert not written, written
