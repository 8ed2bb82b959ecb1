"""The model folder names the pack uses in a ComfyUI host: one place for the nodes (which register them) and the
headless host and CLI (which fill them). Plain names; nothing here imports the host."""

MODEL_FOLDER = "dynamicrafter"
# The adapters' model folder: nodes/adapter.py registers it; generate.py --adapter puts the file's folder first.
ADAPTER_FOLDER = "dynamicrafter_adapters"
# Where a DynamiCrafter checkpoint is looked for, in order.
CHECKPOINT_FOLDERS = (MODEL_FOLDER, "diffusion_models", "checkpoints")
# The 2024 hosts' names of two model folders; current hosts map them onto the new ones (folder_paths.map_legacy).
LEGACY_FOLDER_NAMES = {"diffusion_models": "unet", "text_encoders": "clip"}
