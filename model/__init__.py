"""DynamiCrafter in plain PyTorch: the 3D UNet, the image query transformer P, the schedule, the reference sampler,
the variant registry and safe checkpoint I/O. Imports nothing from ComfyUI."""
