"""The architecture rules of the README's "Architecture" section, read from the source with ``ast``.

- Imports only point down: ``model/`` (host-free math) imports no other room; ``nodes/`` (host glue) and
  ``training/`` import only ``model/``; ``cli/`` (headless host and the CLI's helpers) imports ``model/``
  only; the entry points and tools (``generate.py``, ``train.py``, ``convert.py``,
  ``__init__.py``, ``bench/``, ``scripts/``) sit on top.
- No import cycle between the pack's modules, counting imports inside functions too.
- A pack module imported inside a function says why on that line (``# lazy: <reason>``).
- No product function over 80 lines, no product file over 500 lines.
"""
from __future__ import annotations

import ast
import pathlib
from typing import Dict, List, Set, Tuple

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "comfyui_dynamicrafter"
SKIP_PARTS = {"tests", ".venv", ".git", "web", "workflows", "example_workflows", "__pycache__"}
# room -> the rooms it may import (itself always)
ALLOWED = {
    "model": set(),
    "nodes": {"model"},
    "training": {"model"},
    "cli": {"model"},
    "top": {"model", "nodes", "training", "cli"},
    "bench": {"model", "nodes", "training", "cli", "top"},       # tools beside the entry points
    "scripts": {"model", "nodes", "training", "cli", "top"},
}
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 500


def product_files() -> List[pathlib.Path]:
    return sorted(p for p in ROOT.rglob("*.py") if not SKIP_PARTS & set(p.relative_to(ROOT).parts))


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    head = module.split(".")[0]
    return head if "." in module or head in ALLOWED and head != "top" else "top"


def imported_modules(path: pathlib.Path, modules: Set[str]) -> List[Tuple[str, int, bool, str]]:
    """(target module, line, inside a function, source line) of every pack import in ``path``."""
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = path.read_text(encoding="utf-8").splitlines()
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        targets: List[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".") if pkg else []
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = (node.module or "").removeprefix(PACKAGE + ".") if (node.module or "").startswith(PACKAGE) \
                    else (node.module or "")
            subs = [f"{mod}.{a.name}" if mod else a.name for a in node.names]
            targets = [t for t in subs if t in modules] or [mod]   # `from . import x`: the submodule, not the package
        elif isinstance(node, ast.Import):
            targets = [a.name.removeprefix(PACKAGE + ".") for a in node.names if a.name.startswith(PACKAGE + ".")]
        for t in targets:
            if t in modules and t != me:
                out.append((t, node.lineno, id(node) in inner, lines[node.lineno - 1]))
    return out


def import_graph() -> Tuple[Dict[str, Set[str]], List[str]]:
    files = product_files()
    modules = {module_name(p) for p in files}
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    unexplained = []
    for p in files:
        for target, line, inside, src in imported_modules(p, modules):
            graph[module_name(p)].add(target)
            if inside and "# lazy:" not in src:
                unexplained.append(f"{p.relative_to(ROOT)}:{line}: {src.strip()}")
    return graph, unexplained


def test_imports_point_down():
    graph, _ = import_graph()
    upward = sorted(f"{a} -> {b}" for a, bs in graph.items() for b in bs
                    if room_of(b) != room_of(a) and room_of(b) not in ALLOWED[room_of(a)])
    assert not upward, f"{len(upward)} upward imports: " + "; ".join(upward)


def test_no_import_cycles():
    graph, _ = import_graph()
    cycles, state = [], {}

    def visit(m: str, stack: List[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"{len(cycles)} import cycles: " + "; ".join(cycles)


def test_function_level_imports_say_why():
    _, unexplained = import_graph()
    assert not unexplained, (f"{len(unexplained)} pack imports inside functions without '# lazy: <reason>': "
                             + "; ".join(unexplained))


def test_no_long_functions_or_files():
    long_funcs, long_files = [], {}
    for p in product_files():
        text = p.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_FILE_LINES:
            long_files[p.relative_to(ROOT).as_posix()] = len(text.splitlines())
        for f in ast.walk(ast.parse(text)):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = f.end_lineno - f.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_funcs.append(f"{p.relative_to(ROOT)}:{f.lineno} {f.name} ({n} lines)")
    assert not long_funcs and not long_files, (f"functions over {MAX_FUNCTION_LINES} lines: {long_funcs}; "
                                               f"files over {MAX_FILE_LINES} lines: {long_files}")


def test_the_top_level_holds_only_the_entry_points():
    """README "Architecture": the root reads as the front door; the CLI's helpers live in cli/."""
    assert sorted(p.name for p in ROOT.glob("*.py")) == ["__init__.py", "convert.py", "generate.py", "train.py"]


def test_the_rules_see_an_upward_import(tmp_path):
    """The checker itself: a model/ file importing nodes/ is an upward arrow (guards the rules against rot)."""
    assert room_of("model.sampler") == "model" and room_of("generate") == "top" and room_of("cli.headless") == "cli"
    assert "nodes" not in ALLOWED["model"] and "cli" not in ALLOWED["nodes"]


# README "Architecture": every host-version difference in nodes/compat.py. Outside it, nodes/ neither reads a host
# function's signature nor probes a host module for a name nor falls back on a missing host module. Left elsewhere,
# each with the reason it is no host-version difference:
SEAM_EXCEPTIONS = {
    ("nodes/widgets.py", "inspect.signature"): "the pack's own VALIDATE_INPUTS, called as every host calls it",
    ("nodes/video.py", "except ImportError"): "comfy.cli_args is in every host; the fallback runs outside one",
    ("nodes/video.py", "getattr on a host module"): "--disable-metadata is in every host (2024-03 on); same fallback",
}
HOST_ROOTS = {"comfy", "folder_paths", "latent_preview", "node_helpers", "comfy_extras"}


def host_seams(source: str) -> List[Tuple[int, str]]:
    """(line, kind) of each host-version probe in ``source``: ``inspect.signature(...)``, ``hasattr`` / ``getattr`` on
    a host module (``comfy.x``, or a name a host module was imported as), and a ``try`` importing a host module with
    ``except ImportError``."""
    tree = ast.parse(source)
    host_names = set(HOST_ROOTS)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            host_names |= {a.asname for a in node.names if a.asname and a.name.split(".")[0] in HOST_ROOTS}
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in HOST_ROOTS:
            host_names |= {a.asname or a.name for a in node.names}

    def root(expr) -> str:
        while isinstance(expr, ast.Attribute):
            expr = expr.value
        return expr.id if isinstance(expr, ast.Name) else ""

    def imports_host(stmts) -> bool:
        return any(isinstance(n, ast.Import) and any(a.name.split(".")[0] in HOST_ROOTS for a in n.names)
                   or isinstance(n, ast.ImportFrom) and not n.level
                   and (n.module or "").split(".")[0] in HOST_ROOTS
                   for s in stmts for n in ast.walk(s))

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "signature" and root(f) == "inspect":
                found.append((node.lineno, "inspect.signature"))
            elif isinstance(f, ast.Name) and f.id in ("hasattr", "getattr") and node.args \
                    and root(node.args[0]) in host_names:
                found.append((node.lineno, f"{f.id} on a host module"))
        elif isinstance(node, ast.Try) and imports_host(node.body) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            found.append((node.lineno, "except ImportError"))
    return sorted(found)


def test_host_version_differences_live_in_compat():
    stray = []
    for p in sorted((ROOT / "nodes").rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        if rel == "nodes/compat.py" or rel.startswith("nodes/host/"):
            continue
        stray += [f"{rel}:{line} {kind}" for line, kind in host_seams(p.read_text(encoding="utf-8"))
                  if (rel, kind) not in SEAM_EXCEPTIONS]
    assert not stray, ("host-version probes outside nodes/compat.py (move each into compat.py with the host change "
                       "it follows): " + "; ".join(stray))


def test_the_seam_rule_sees_a_probe():
    """The checker itself, on a snippet with one of each probe (and a pack-object hasattr it must leave alone)."""
    src = ("import inspect\nimport comfy.context_windows as cw\n"
           "def f(ctl, model):\n"
           "    inspect.signature(ctl.get_control)\n"
           "    getattr(cw.IndexListCallbacks, 'RESIZE_COND_ITEM', None)\n"
           "    hasattr(comfy.samplers, 'CFGGuider')\n"
           "    hasattr(model, 'clone')\n"
           "    try:\n        from comfy.weight_adapter import LoRAAdapter\n    except ImportError:\n        pass\n")
    assert host_seams(src) == [(4, "inspect.signature"), (5, "getattr on a host module"),
                               (6, "hasattr on a host module"), (8, "except ImportError")]
