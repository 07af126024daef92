"""How the package's modules import each other: loading any config file imports no jax,
and no module imports itself through others (a cycle)."""

import ast
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_loading_every_config_file_imports_no_jax():
  """Config files are read by tools that must stay light (and before jax's flags are set):
  every variant of every config file loads and passes its options check without jax."""
  code = (
    'import json, pathlib, sys\n'
    'from ecam_jax import configuration\n'
    'from ecam_jax.models import registry\n'
    'for path in sorted(pathlib.Path("configs").glob("*.py")):\n'
    '  for variant in registry.VARIANTS:\n'
    '    config = configuration.load_config(path, f"variant={variant}")\n'
    '    registry.options_of(config.model)\n'
    'print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "flax"))))\n'
  )
  done = subprocess.run(
    [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True
  )
  assert json.loads(done.stdout.splitlines()[-1]) == []


def _imports() -> dict[str, set[str]]:
  """module -> the package's modules it imports, at any depth of its file."""
  modules = {}
  for path in (ROOT / 'ecam_jax').rglob('*.py'):
    parts = list(path.relative_to(ROOT).with_suffix('').parts)
    modules['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  graph = {}
  for name, path in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        candidates = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        candidates = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
      else:
        continue
      for target in candidates:
        while target and target not in modules:
          target = target.rpartition('.')[0]
        # A package's __init__ runs when its submodules are imported: not a cycle's edge.
        if target and target != name and not name.startswith(target + '.'):
          targets.add(target)
    graph[name] = targets
  return graph


def test_no_module_imports_itself_through_others():
  graph = _imports()
  cycles = []

  def visit(node, path, done):
    for target in graph[node]:
      if target in path:
        cycles.append(path[path.index(target) :] + [target])
      elif target not in done:
        done.add(target)
        visit(target, path + [target], done)

  for start in sorted(graph):
    visit(start, [start], {start})
  assert cycles == []
