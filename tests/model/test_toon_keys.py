"""Issue 21, finding 7: a ToonCrafter file whose decoder lost keys is told which keys are missing (as
DCN_ToonVAELoader says), not that its metadata is wrong."""
import pytest

from comfyui_dynamicrafter.model.detect import detect_variant
from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
from comfyui_dynamicrafter.model.tiny import full_checkpoint, variant_metadata


def test_tooncrafter_file_missing_decoder_keys_names_them():
    sd = full_checkpoint("tooncrafter", seed=3)
    lost = sorted(k for k in sd if "decoder.attn_refinement." in k)
    assert 0 < len(lost) < 148
    keys = [k for k in sd if k not in lost]
    assert detect_variant(list(sd), metadata=variant_metadata("tooncrafter")).variant == "tooncrafter"
    with pytest.raises(DynamiCrafterInputError) as e:
        detect_variant(keys, metadata=variant_metadata("tooncrafter"))
    msg = str(e.value)
    assert f"{len(lost)} missing decoder keys" in msg and "attn_refinement" in msg, msg
    assert "metadata is wrong" not in msg and "\n" not in msg
