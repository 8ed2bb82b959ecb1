"""The tests' synthetic datasets: the trainer's own demo-data writer (training/demo.py)."""
from comfyui_dynamicrafter.training.demo import *  # noqa: F401,F403
from comfyui_dynamicrafter.training.demo import make_image_dataset, make_video_dataset, write_mp4  # noqa: F401
