"""The standalone DynamiCrafter trainer (stages, data, encoders, loop, checkpoints, adapter export); see README.md."""
