"""The node registry: every node class of the pack, by id (prefix DCN_; none of the ids other DynamiCrafter packs
use, listed in tests/nodes/test_dcn_nodes.py TAKEN)."""
from . import compat
from .adapter import DCN_ApplyAdapter
from .conditioning import DCN_Conditioning
from .encode import DCN_ImageEncode
from .loader import DCN_Loader
from .sampler_nodes import NODES as _SAMPLER_NODES
from .sketch import DISPLAY_NAMES as _SKETCH_NAMES, NODES as _SKETCH_NODES
from .toon import DISPLAY_NAMES as _TOON_NAMES, NODES as _TOON_NODES
from .video import DCN_SaveVideo
from .widgets import validate_on_execute

compat.register_model_folder()

NODE_CLASS_MAPPINGS = {
    "DCN_Loader": DCN_Loader,
    "DCN_ApplyAdapter": DCN_ApplyAdapter,
    "DCN_ImageEncode": DCN_ImageEncode,
    "DCN_Conditioning": DCN_Conditioning,
    **_SAMPLER_NODES,
    **_TOON_NODES,
    **_SKETCH_NODES,
    "DCN_SaveVideo": DCN_SaveVideo,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "DCN_Loader": "DynamiCrafter Loader",
    "DCN_ApplyAdapter": "DynamiCrafter Apply Adapter",
    "DCN_ImageEncode": "DynamiCrafter Image Encode",
    "DCN_Conditioning": "DynamiCrafter Conditioning",
    "DCN_Sampler": "DynamiCrafter Sampler (reference DDIM)",
    "DCN_Windows": "DynamiCrafter Context Windows",
    "DCN_Sigmas": "DynamiCrafter DDIM Sigmas",
    "DCN_Guider": "DynamiCrafter Guider (dual CFG)",
    "DCN_SaveVideo": "DynamiCrafter Save Video",
    **_TOON_NAMES,
    **_SKETCH_NAMES,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: v for k, v in NODE_DISPLAY_NAME_MAPPINGS.items() if k in NODE_CLASS_MAPPINGS}
for _cls in NODE_CLASS_MAPPINGS.values():  # every node checks its widgets when it executes, whatever the host checked
    validate_on_execute(_cls)
