"""The node registry: every node class of the pack, by id (prefix DCN_; none of the ids other DynamiCrafter packs
use, listed in tests/nodes/test_dcn_nodes.py TAKEN)."""
from . import adapter, compat, conditioning, encode, loader, sampler_nodes, sketch, toon, video
from .widgets import validate_on_execute

compat.register_model_folder()

# One style: each node file lists its classes in NODES; a class's id is its name, its menu name its DISPLAY_NAME.
_NODE_FILES = (loader, adapter, encode, conditioning, sampler_nodes, toon, sketch, video)   # the menu's order
NODE_CLASS_MAPPINGS = {cls.__name__: cls for m in _NODE_FILES for cls in m.NODES}
NODE_DISPLAY_NAME_MAPPINGS = {name: cls.DISPLAY_NAME for name, cls in NODE_CLASS_MAPPINGS.items()}
for _cls in NODE_CLASS_MAPPINGS.values():  # every node checks its widgets when it executes, whatever the host checked
    validate_on_execute(_cls)
