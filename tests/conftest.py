import os
import runpy

# the pack folder as the package comfyui_dynamicrafter (cli/bootstrap.py, stdlib only), as generate.py and train.py do
runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cli", "bootstrap.py"))[
    "register"]()
