"""DynamiCrafter trainer entry point: ``python train.py --config run.yaml`` or ``torchrun ... train.py ...``.

See training/README.md. Registers the pack folder as the package ``comfyui_dynamicrafter`` (as the tests do) and
runs ``training.cli.main``.
"""
import importlib
import importlib.util
import os
import sys

if __name__ == "__main__":
    _here = os.path.dirname(os.path.abspath(__file__))
    _spec = importlib.util.spec_from_file_location("_dc_bootstrap", os.path.join(_here, "_bootstrap.py"))
    _boot = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_boot)
    sys.exit(importlib.import_module(f"{_boot.register()}.training.cli").main())
