"""ComfyUI entry point: node mappings and the web folder only.

Outside a ComfyUI process (pytest imports this file as the rootdir package; CLIs register the folder without
running it) there is no ``comfy``/``folder_paths`` module, and the pack exports no nodes.
"""
import importlib.util

WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

if all(importlib.util.find_spec(m) is not None for m in ("comfy", "folder_paths")):
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
