"""Make the pack importable under one fixed name outside ComfyUI (tests, CLIs).

Inside ComfyUI the pack is imported under its folder name, so every module uses relative imports only;
scripts and tests register the folder as the package ``comfyui_dynamicrafter`` without running ``__init__.py``
(which needs the host). Standard library only: a script runs this file with ``runpy.run_path`` and sets its own
``__package__`` to the name ``register`` returns (PEP 366), so its relative imports reach the pack.
"""
import os
import sys
import types

PACKAGE = "comfyui_dynamicrafter"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the pack folder (this file is cli/bootstrap.py)


def register(name: str = PACKAGE) -> str:
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [ROOT]
        pkg.__file__ = os.path.join(ROOT, "__init__.py")
        sys.modules[name] = pkg
    return name
