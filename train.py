"""DynamiCrafter trainer entry point: ``python train.py --config run.yaml`` or ``torchrun ... train.py ...``.

See training/README.md. Registers the pack folder as the package ``comfyui_dynamicrafter`` (as the tests do) and
runs ``training.cli.main``.
"""
import importlib
import os
import runpy
import sys

if __name__ == "__main__":  # the pack folder as the package comfyui_dynamicrafter (cli/bootstrap.py, stdlib only)
    _package = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli", "bootstrap.py"))[
        "register"]()
    sys.exit(importlib.import_module(f"{_package}.training.cli").main())
