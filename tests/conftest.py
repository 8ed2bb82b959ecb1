import importlib.util
import os

_spec = importlib.util.spec_from_file_location("_dc_bootstrap", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_bootstrap.py"))
_boot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_boot)
_boot.register()
