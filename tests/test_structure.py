"""The shape of the code, checked: layers that import one way, one home per task, the
Task/Output interface declared, configs that validate only their own fields, data readers
that take one `Source`, short signatures in the training layer, size rules, private APIs
only in kerasft/core/_compat.py, FLAGS only in entry points, and a test suite that leaves
the checkout as it found it.

Every import counts, function-level ones included (`_imports`)."""

import ast
import dataclasses
import os
import pathlib
import re
import subprocess

import pytest

from conftest import REPO

PACKAGE = pathlib.Path(REPO) / "kerasft"
SOURCES = sorted(PACKAGE.rglob("*.py"))
COMMANDS = ("train", "evaluate", "predict", "export", "tune", "adapt", "cluster")
TASK_WORDS = ("tagging", "segmentation", "multitask", "detection")
# Each layer may import its own and lower layers only. A task folder is a vertical slice:
# its settings sit with the configs, its data readers with the data layer, its graph with
# the models; its output, task, serving and report roles are the task layer.
LAYERS = ("core", "config", "data", "models", "reporting", "tasks", "methods", "training",
          "serving", "workflows", "tuning", "commands")
ROLE_LAYERS = {"settings": "config", "data": "data", "graph": "models"}
ROLES = {"__init__", "settings", "data", "graph", "output", "task", "serving", "report",
         "solver"}
REGISTRY = ("kerasft.tasks.registry", "kerasft.tasks.settings")
HEAVY = ("tensorflow", "keras", "keras_hub", "tensorflow_text", "tensorflow_hub",
         "tensorflow_datasets", "tf2onnx", "onnxruntime", "keras_tuner")


def _module(path: pathlib.Path) -> str:
  parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in SOURCES}
TREES = {m: ast.parse(p.read_text()) for m, p in MODULES.items()}


def layer(module: str) -> str:
  """The layer a kerasft module belongs to (LAYERS)."""
  parts = module.split(".")
  if len(parts) == 1 or (len(parts) == 2 and parts[1] in COMMANDS):
    return "commands"
  if parts[1] == "tasks":
    if module == "kerasft.tasks.settings":
      return "config"
    if len(parts) == 4 and parts[3] in ROLE_LAYERS:
      return ROLE_LAYERS[parts[3]]
    return "tasks"
  return parts[1]


def _resolve(name: str) -> str | None:
  while name and name not in MODULES:
    name = name.rpartition(".")[0]
  return name or None


def _imports(module: str, precise: bool = False) -> list[tuple[str, int, bool]]:
  """(imported kerasft module, line, inside a function) of every import in `module`.
  `from package import name` counts the package too (its __init__ runs), unless `precise`
  and `name` is a module of it."""
  tree, found = TREES[module], []
  inner = {n.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef,
                                                              ast.AsyncFunctionDef))
           for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names = [f"{node.module}.{a.name}" for a in node.names]
      if not precise or any(n not in MODULES for n in names):
        names.append(node.module)
    else:
      continue
    targets = {_resolve(n) for n in names if n == "kerasft" or n.startswith("kerasft.")}
    for target in targets - {None, module, "kerasft"}:
      found.append((target, node.lineno, node.lineno in inner))
  return found


def _heavy_at_import() -> set[str]:
  """Modules whose import (top level, transitively) imports a heavy third-party library."""
  direct, deps = set(), {}
  for module, tree in TREES.items():
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    for n in top:
      names = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
      if any(name.split(".")[0] in HEAVY for name in names):
        direct.add(module)
    deps[module] = {t for t, _, inside in _imports(module) if not inside}
  heavy, changed = set(direct), True
  while changed:
    changed = False
    for module, targets in deps.items():
      if module not in heavy and targets & heavy:
        heavy.add(module)
        changed = True
  return heavy


def test_imports_point_down_the_layers():
  upward = []
  for module in MODULES:
    for target, line, _ in _imports(module):
      if LAYERS.index(layer(target)) > LAYERS.index(layer(module)):
        upward.append(f"{module}:{line} ({layer(module)}) imports {target} ({layer(target)})")
  assert not upward, upward


def test_no_import_cycle():
  graph = {m: {t for t, _, _ in _imports(m)} for m in MODULES}
  index, low, stack, on, cycles = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))
  for v in graph:
    if v not in index:
      visit(v)
  assert not cycles, cycles


def test_function_level_imports_only_defer_heavy_libraries():
  """An import inside a function of a kerasft module is there to keep TensorFlow (or
  another heavy library) out of start-up; a light module is imported at the top."""
  heavy = _heavy_at_import()
  light = [f"{m}:{line} imports {t} inside a function"
           for m in MODULES for t, line, inside in _imports(m, precise=True)
           if inside and t not in heavy]
  assert not light, light


def _names(tree) -> list[tuple[str, int]]:
  """(identifier, line) of every name, attribute, definition and argument in `tree`."""
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Name):
      out.append((node.id, node.lineno))
    elif isinstance(node, ast.Attribute):
      out.append((node.attr, node.lineno))
    elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
      out.append((node.name, node.lineno))
    elif isinstance(node, ast.arg):
      out.append((node.arg, node.lineno))
    elif isinstance(node, ast.alias):
      out.append((node.asname or node.name, node.lineno))
  return out


def test_a_task_lives_in_its_folder_and_the_registry():
  """Outside kerasft/tasks/<task>/ and the registry, no module is named after a task,
  imports a task's folder, names a task in an identifier or compares with its name."""
  found = []
  for module, tree in TREES.items():
    own = module.split(".")[2] if module.startswith("kerasft.tasks.") else ""
    if module in REGISTRY:
      continue
    others = [w for w in TASK_WORDS if w != own]
    if any(w in module for w in others):
      found.append(f"{module}: named after a task")
    for target, line, _ in _imports(module):
      if any(f"kerasft.tasks.{w}" in target for w in others):
        found.append(f"{module}:{line} imports {target}")
    for name, line in _names(tree):
      if any(w in name.lower() for w in others):
        found.append(f"{module}:{line} names {name}")
    for node in ast.walk(tree):
      if isinstance(node, ast.Constant) and node.value in others:
        found.append(f"{module}:{node.lineno} compares or keys on {node.value!r}")
  assert not found, found


def test_task_folders_hold_files_of_fixed_roles():
  folders = [p for p in (PACKAGE / "tasks").iterdir() if p.is_dir() and p.name != "__pycache__"]
  odd = [f"{f.name}/{p.name}" for f in folders for p in f.glob("*.py") if p.stem not in ROLES]
  assert folders and not odd, odd


def _declared(cls) -> set[str]:
  """What a class declares: its (and its bases') attributes, and what __init__ sets."""
  import inspect
  import textwrap
  tree = ast.parse(textwrap.dedent(inspect.getsource(cls.__init__)))
  assigned = {t.attr for node in ast.walk(tree) if isinstance(node, ast.Assign)
              for target in node.targets for t in ast.walk(target)
              if isinstance(t, ast.Attribute) and ast.unparse(t.value) == "self"}
  return {n for k in cls.__mro__ for n in vars(k)} | assigned


# Expressions that hold a Task or an Output outside kerasft/tasks.
OBJECT = re.compile(r"^(self\.)?(\w+_)?(task|task_class|output|head)$|^(self\.)?(\w+_)?task\.output$")


def _used_outside_tasks() -> dict[str, set[str]]:
  """{"task"/"output": attribute names used on such objects outside kerasft/tasks/ (and
  the configs, whose `output` is a file name)}."""
  used = {"task": set(), "output": set()}
  for module, tree in TREES.items():
    if module.startswith("kerasft.tasks") or layer(module) == "config":
      continue
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute):
        owner = ast.unparse(node.value)
        if OBJECT.search(owner):
          kind = "output" if owner.endswith(("output", "head")) else "task"
          used[kind].add(node.attr)
  return used


def test_what_is_used_of_a_task_or_output_is_declared_on_its_base_class():
  from kerasft.tasks import base
  used = _used_outside_tasks()
  missing = sorted(f"Task.{n}" for n in used["task"] - _declared(base.Task)) + sorted(
      f"Output.{n}" for n in used["output"] - _declared(base.Output))
  assert not missing, missing


def test_capability_flags_are_not_read_outside_tasks():
  flags = {"one_label", "per_pixel", "classifies", "convex", "model_augmentation",
           "sliceable", "INPUT_DTYPE", "unsearched"}
  used = _used_outside_tasks()
  assert not (used["task"] | used["output"]) & flags


def test_an_output_without_report_sections_fails_loudly():
  from kerasft.tasks import base
  from kerasft.tasks.classify import output

  class Incomplete(output.Multiclass):  # pylint: disable=abstract-method
    report_sections = base.Output.report_sections

  with pytest.raises(TypeError):
    Incomplete()
  with pytest.raises(TypeError):
    base.Output()  # pylint: disable=abstract-class-instantiated


def test_a_config_validates_only_its_own_fields():
  """No config's __post_init__ reads a nested group's fields (another group's settings);
  checks across groups run once, in `kerasft.config.checks` (and the task objects'), so
  `dataclasses.replace` never re-runs them."""
  import kerasft
  from kerasft.config import checks
  nested = {cls.__name__: {f.name for f in dataclasses.fields(cls)
                           if dataclasses.is_dataclass(f.default_factory)}
            for cls in (kerasft.RunConfig, kerasft.DataConfig)}
  reaching = []
  for module, tree in TREES.items():
    if layer(module) != "config":
      continue
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
      groups = nested.get(cls.name, set())
      for node in (n for n in cls.body if isinstance(n, ast.FunctionDef)
                   and n.name == "__post_init__"):
        for sub in ast.walk(node):
          if (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute)
              and ast.unparse(sub.value.value) == "self" and sub.value.attr in groups):
            reaching.append(f"{module}:{sub.lineno} {ast.unparse(sub)}")
  assert nested["RunConfig"] and not reaching, reaching
  inconsistent = dataclasses.replace(kerasft.RunConfig(), model=kerasft.ModelConfig(
      unfreeze_top=3))  # no fine-tune epochs: a cross-group mistake, found by the checks
  with pytest.raises(kerasft.UsageError, match="^--unfreeze_top"):
    checks.check_run(inconsistent)


def test_data_readers_take_a_source():
  """Readers take one `Source` (flag, path, options), not separate flag/where strings."""
  threaded = []
  for module, tree in TREES.items():
    if layer(module) != "data":
      continue
    for node in ast.walk(tree):
      if isinstance(node, ast.FunctionDef):
        names = {a.arg for a in node.args.args + node.args.kwonlyargs}
        if names & {"flag", "where"}:
          threaded.append(f"{module}:{node.lineno} {node.name}")
  assert not threaded, threaded


def test_training_functions_take_at_most_six_parameters():
  long = []
  for module, tree in TREES.items():
    if layer(module) != "training":
      continue
    for node in ast.walk(tree):
      if isinstance(node, ast.FunctionDef):
        count = len([a for a in node.args.args + node.args.kwonlyargs
                     if a.arg not in ("self", "cls")])
        if count > 6:
          long.append(f"{module}:{node.lineno} {node.name} takes {count}")
  assert not long, long


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


def test_docstrings_stay_docstrings():
  """The size rule is met by splitting, not by turning a docstring into a comment on the
  `def` line."""
  squeezed = [f"{p.relative_to(PACKAGE)}:{n}" for p in SOURCES
              for n, line in enumerate(_lines(p), 1)
              if re.match(r"\s*def .*\):.*\s+#", line) or re.match(r"\s*def .*->.*:\s+#", line)]
  assert not squeezed, squeezed


def test_private_keras_and_tensorflow_apis_only_in_compat():
  private = re.compile(r"keras\.src|tensorflow\.python|\._(call_context_args|initial_epoch|"
                       r"track_variable|backend_update_step|apply_weight_decay)\b|"
                       r"getattr\([^,]+, \"_")
  found = [f"{p.name}:{n}" for p in SOURCES if p.name != "_compat.py"
           for n, line in enumerate(_lines(p), 1) if private.search(line)]
  assert not found, found


def test_flags_are_read_only_in_entry_points():
  entry = {f"kerasft.{c}" for c in COMMANDS} | {"kerasft.core.cli"}
  found = [m for m, p in MODULES.items() if "FLAGS." in p.read_text() and m not in entry]
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


def test_no_name_is_undefined_or_shadows_an_import_in_the_package_benchmarks_or_tests():
  """pyflakes over every .py file: an undefined name (a benchmark script left behind by a
  refactor) or an import shadowed before use (`budget = settings.budget` hid the module
  `budget` in adapt) fails here, not in a user's run. String annotations marked
  `# noqa: F821` are skipped."""
  from pyflakes import api, messages, reporter as pyflakes_reporter
  found = []

  class Collect(pyflakes_reporter.Reporter):
    def __init__(self):
      super().__init__(None, None)

    def flake(self, message):
      if isinstance(message, (messages.UndefinedName, messages.UndefinedLocal,
                              messages.RedefinedWhileUnused)):
        found.append(message)

    def syntaxError(self, filename, msg, lineno, offset, text):  # noqa: N802
      found.append(f"{filename}:{lineno}: {msg}")

  root = pathlib.Path(REPO)
  for folder in ("kerasft", "benchmarks", "tests"):
    for path in sorted((root / folder).rglob("*.py")):
      api.checkPath(str(path), Collect())
  lines = {str(m): m for m in found}
  real = [text for text, m in lines.items() if isinstance(m, str) or "noqa: F821" not in
          (root / m.filename).read_text().splitlines()[m.lineno - 1]]
  assert not real, "\n".join(real)
