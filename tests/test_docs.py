"""What the documentation names exists: every file path (`ecam_jax/models/unet.py`,
`models/resize.py`, a relative link) and every Python name (`ecam_jax.models.registry`,
`resize.resize_bilinear`, `layers.make_norm`) that a Markdown page of the repository
writes in backticks or links to. Code that moves without its docs fails here."""

import ast
import functools
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted(
  p
  for pattern in ('*.md', 'docs/**/*.md', 'launch/*.md', 'benchmarks/**/*.md', 'tests/**/*.md')
  for p in ROOT.glob(pattern)
)
# Files a page may name by path: the project's own kinds of files.
SUFFIXES = ('.py', '.md', '.sh', '.sbatch', '.toml', '.txt')
# Where a path in backticks may be relative to: the repository, the page's folder, the
# package and its models. A path whose first folder is none of theirs is another project's
# (a reference implementation's file) and is not checked.
BASES = ('', None, 'ecam_jax', 'ecam_jax/models')
# `section.key` of the config, and file names: not Python names.
CONFIG_SECTIONS = ('config', 'data', 'augment', 'model', 'loss', 'train', 'eval')
EXTENSIONS = ('py', 'md', 'json', 'jsonl', 'png', 'csv', 'npz', 'npy', 'nii', 'gz', 'txt', 'onnx')


@functools.cache
def _modules() -> dict[str, list[pathlib.Path]]:
  """Python files of the package, the tests and the benchmarks by their stem."""
  found: dict[str, list[pathlib.Path]] = {}
  for folder in ('ecam_jax', 'tests', 'benchmarks'):
    for path in (ROOT / folder).rglob('*.py'):
      found.setdefault(path.stem, []).append(path)
  return found


@functools.cache
def _names(path: pathlib.Path) -> frozenset[str]:
  """Names a module defines at its top level, and Class.attribute for its classes."""
  names = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      names.add(node.name)
      if isinstance(node, ast.ClassDef):
        for item in node.body:
          if isinstance(item, ast.FunctionDef):
            names.add(f'{node.name}.{item.name}')
          elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            names.add(f'{node.name}.{item.target.id}')
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names.update(t.id for t in targets if isinstance(t, ast.Name))
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split('.')[0] for a in node.names)
  return frozenset(names)


def _path_exists(token: str, page: pathlib.Path) -> bool | None:
  """True/False for a path under one of BASES' folders; None for another project's."""
  folders = [page.parent if base is None else ROOT / base for base in BASES]
  if not any((folder / token.split('/')[0]).is_dir() for folder in folders):
    return None
  return any((folder / token).exists() for folder in folders)


def _dotted_exists(token: str) -> bool | None:
  """True/False for a reference to the package's code (`ecam_jax.a.b` or `module.name`
  with `module` a file of the package, the tests or the benchmarks); None for anything
  else (a library's name, a config key)."""
  parts = token.split('.')
  if parts[0] in CONFIG_SECTIONS or parts[-1] in EXTENSIONS:
    return None
  if parts[0] == 'ecam_jax':
    for cut in range(len(parts), 0, -1):
      base = ROOT.joinpath(*parts[:cut])
      for path in (base.with_suffix('.py'), base / '__init__.py'):
        if path.is_file():
          rest = '.'.join(parts[cut:])
          return not rest or rest in _names(path) or rest.split('.')[0] in _names(path)
    return False
  candidates = _modules().get(parts[0], [])
  if len(parts) < 2 or not candidates:
    return None
  rest = '.'.join(parts[1:])
  return any(
    rest in _names(p) or any(n.endswith(f'.{rest}') for n in _names(p)) for p in candidates
  )


def _references(page: pathlib.Path):
  text = page.read_text()
  for token in re.findall(r'`([^`\s]+)`', text):
    token = token.rstrip('.,:;').split('(')[0].split('::')[0]
    yield 'code', token
  for target in re.findall(r'\]\(([^)\s]+)\)', text):
    if not re.match(r'[a-z]+:', target) and not target.startswith('#'):
      yield 'link', target.split('#')[0]


def _missing(kind: str, token: str, page: pathlib.Path) -> bool:
  if kind == 'link':
    return bool(token) and not (page.parent / token).exists()
  if token.endswith(SUFFIXES) and '/' in token and not any(c in token for c in '{*<'):
    return _path_exists(token, page) is False
  if re.fullmatch(r'[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+', token):
    return _dotted_exists(token) is False
  return False


@pytest.mark.parametrize('page', PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_path_and_name_a_page_gives_exists(page):
  missing = [token for kind, token in _references(page) if _missing(kind, token, page)]
  assert missing == [], f'{page.relative_to(ROOT)} names what does not exist: {missing}'
