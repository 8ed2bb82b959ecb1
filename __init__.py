"""ComfyUI entry point: node mappings and the web folder only.

Outside a ComfyUI process (pytest imports this file as the rootdir package; CLIs register the folder without
running it) there is no ``comfy``/``folder_paths`` module, and the pack exports no nodes.

A host before 2025 imports a custom_nodes folder under its bare folder name; with dots in that name (a clone into
``ComfyUI-DynamiCrafter.native``) Python cannot resolve the pack's two-level relative imports, so the pack then loads
itself once more under the name with each dot replaced by ``_x_`` (what current hosts do themselves).
"""
import importlib.util
import os
import sys

WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

if all(importlib.util.find_spec(m) is not None for m in ("comfy", "folder_paths")):
    if "." in __name__ and __name__.rpartition(".")[0] not in sys.modules:
        _alias = __name__.replace(".", "_x_")
        _spec = importlib.util.spec_from_file_location(_alias, __file__,
                                                       submodule_search_locations=[os.path.dirname(__file__)])
        _pack = importlib.util.module_from_spec(_spec)
        sys.modules[_alias] = _pack
        _spec.loader.exec_module(_pack)
        NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = _pack.NODE_CLASS_MAPPINGS, _pack.NODE_DISPLAY_NAME_MAPPINGS
    else:
        from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
