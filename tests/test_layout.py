"""The layout of docs/ARCHITECTURE.md holds: tfm's packages import one way, down the layers, with no cycles, no private
names across modules, nothing importing the CLI, `backends` never importing tfm, and no module over MAX_LINES lines.

Every import counts, those inside functions too. The checks are functions of a {module: imports} map, so the tests
below also show each one failing on a map with the fault added."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 300
# the layers, bottom first: a module imports only from its own layer and the ones before it (the face, tfm/__init__.py,
# re-exports from all of them and sits above them all; the CLI is the top and nothing imports it)
LAYERS = (("tfm.errors", "tfm.config", "tfm.files", "tfm.reference"), ("tfm.runtime",), ("tfm.nn",), ("tfm.io",),
          ("tfm.interop",), ("tfm.generation",), ("tfm.training",), ("tfm.apps",), ("tfm.cli",))


def module_name(path: Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__": parts.pop()
  return ".".join(parts)


def imports_of(path: Path, package: str | None = None) -> list[tuple[str, str | None, int]]:
  """(module, name imported from it or None, line) for every import in the file, at any depth, relative ones resolved
  against its package (by default, the one it is in)."""
  if package is None: package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
  found = []
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
    if isinstance(node, ast.Import): found += [(a.name, None, node.lineno) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level: base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
      found += [(base, a.name, node.lineno) for a in node.names]
  return found


def import_map(packages: tuple[str, ...] = ("tfm", "backends")) -> dict[str, list[tuple[str, str | None, int]]]:
  """{module: its imports of modules in `packages`}, a `from package import module` read as an import of the module."""
  modules = {module_name(p): p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))}
  graph = {}
  for name, path in modules.items():
    edges = []
    for mod, item, line in imports_of(path):
      if mod.split(".")[0] not in packages: continue
      target = f"{mod}.{item}" if item and f"{mod}.{item}" in modules else mod
      edges.append((target, item if target == mod else None, line))
    graph[name] = edges
  return graph


def layer(module: str) -> int | None:
  for i, prefixes in enumerate(LAYERS):
    if any(module == p or module.startswith(p + ".") for p in prefixes): return i
  return None


def upward_imports(graph) -> list[str]:
  faults = []
  for mod, edges in graph.items():
    if mod == "tfm" or not mod.startswith("tfm"): continue
    for target, _, line in edges:
      if not target.startswith("tfm"): continue
      if layer(target) is None or layer(mod) is None: faults.append(f"{mod}:{line} -> {target}: in no layer")
      elif layer(target) > layer(mod): faults.append(f"{mod}:{line} imports {target}, a layer above it")
  return faults


def cli_imports(graph) -> list[str]:
  return [f"{mod}:{line} imports the CLI ({target})" for mod, edges in graph.items() if not mod.startswith("tfm.cli")
          for target, _, line in edges if target == "tfm.cli" or target.startswith("tfm.cli.")]


def backends_importing_tfm(graph) -> list[str]:
  return [f"{mod}:{line} imports {target}" for mod, edges in graph.items() if mod.split(".")[0] == "backends"
          for target, _, line in edges if target.split(".")[0] == "tfm"]


def private_imports(graph) -> list[str]:
  """`from a.b import _name` where a.b is another package than the importer's (a package's own modules may share)."""
  def package(m: str) -> str: return m if _is_package(m) else m.rpartition(".")[0]
  faults = []
  for mod, edges in graph.items():
    for target, item, line in edges:
      names = [item] if item else [target.rpartition(".")[2]]
      if any(n.startswith("_") and not n.startswith("__") for n in names) and package(target) != package(mod):
        faults.append(f"{mod}:{line} imports the private {target}.{names[0]}" if item else f"{mod}:{line} imports private {target}")
  return faults


def _is_package(module: str) -> bool: return (ROOT / module.replace(".", "/") / "__init__.py").exists()


def cycles(graph) -> list[list[str]]:
  """Every import cycle between modules (strongly connected components of more than one module, or a self-import)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
  sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

  def visit(v: str) -> None:
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w, _, _ in graph.get(v, []):
      if w not in graph: continue
      if w not in index: visit(w); low[v] = min(low[v], low[w])
      elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop(); on.discard(w); comp.append(w)
        if w == v: break
      if len(comp) > 1 or any(t == v for t, _, _ in graph.get(v, [])): out.append(sorted(comp))

  for v in graph:
    if v not in index: visit(v)
  return out


def without_face(graph):
  """The face (tfm/__init__.py) imports every layer, and every `from tfm.x import` passes through it at run time:
  not an edge of the layering. Package __init__ modules that only re-export their package stay in."""
  return {m: [e for e in edges if e[0] != "tfm"] for m, edges in graph.items() if m != "tfm"}


GRAPH = without_face(import_map())


def test_every_module_is_in_a_layer():
  assert [m for m in GRAPH if m.startswith("tfm") and layer(m) is None] == []


def test_imports_go_down_the_layers():
  assert upward_imports(GRAPH) == []


def test_nothing_imports_the_cli():
  assert cli_imports(GRAPH) == []


def test_backends_never_imports_tfm():
  assert backends_importing_tfm(GRAPH) == []


def test_no_private_names_across_packages():
  assert private_imports(GRAPH) == []


def test_no_import_cycles():
  assert cycles(GRAPH) == []


def test_no_module_over_the_line_limit():
  long = {str(p.relative_to(ROOT)): n for p in (ROOT / "tfm").rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
  assert long == {}


# --- each check fails when its fault is there ---------------------------------------------------------------------

def with_edge(graph, source: str, target: str, item: str | None = None):
  return {**graph, source: [*graph.get(source, []), (target, item, 1)]}


def test_an_upward_import_is_found():
  faults = upward_imports(with_edge(GRAPH, "tfm.nn.transformer", "tfm.generation.search"))
  assert faults == ["tfm.nn.transformer:1 imports tfm.generation.search, a layer above it"]


def test_a_cycle_is_found():
  graph = with_edge(GRAPH, "tfm.runtime.memory", "tfm.runtime.cache")
  graph = with_edge(graph, "tfm.runtime.cache", "tfm.runtime.memory")
  assert ["tfm.runtime.cache", "tfm.runtime.memory"] in cycles(graph)


def test_an_import_of_the_cli_is_found():
  assert cli_imports(with_edge(GRAPH, "tfm.apps.translator", "tfm.cli.commands")) == [
    "tfm.apps.translator:1 imports the CLI (tfm.cli.commands)"]


def test_backends_importing_tfm_is_found():
  assert backends_importing_tfm(with_edge(GRAPH, "backends.probe", "tfm.errors")) == ["backends.probe:1 imports tfm.errors"]


def test_a_private_name_from_another_package_is_found():
  faults = private_imports(with_edge(GRAPH, "tfm.nn.vit", "tfm.runtime.tuned", "_tuned_backends"))
  assert faults == ["tfm.nn.vit:1 imports the private tfm.runtime.tuned._tuned_backends"]


@pytest.mark.parametrize("source", ["def f():\n  from tfm.apps import translator\n", "from .. import cli\n"])
def test_imports_inside_functions_and_relative_ones_are_read(tmp_path, source):
  path = tmp_path / "probe.py"
  path.write_text(source)
  assert [(m, item) for m, item, _ in imports_of(path, package="tfm.nn")] == [("tfm.apps" if "translator" in source else "tfm",
                                                                              "translator" if "translator" in source else "cli")]


def test_the_python_pyproject_requires_is_the_one_tinygrad_requires():
  """pyproject's requires-python is what is true: the pinned tinygrad's own floor (0.14 needs 3.11), and this one runs."""
  import re
  from importlib.metadata import metadata
  ours = re.search(r'^requires-python = "(.*?)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
  assert ours == metadata("tinygrad")["Requires-Python"]
  assert sys.version_info >= tuple(int(x) for x in ours.lstrip(">=").split("."))
