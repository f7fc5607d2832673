"""Run by the WebUI at start inside its venv: install only what it lacks (never torch, gradio,
fastapi, pydantic, numpy or safetensors, which the WebUI pins)."""
import launch

# matplotlib (the charts) comes with the gradio of A1111 1.10 (3.41.2) and Forge (4.40): listed so
# that a venv without it still gets it, never reinstalled when present.
NEEDED = {"tqdm": "tqdm", "matplotlib": "matplotlib"}

for module, requirement in NEEDED.items():
    if not launch.is_installed(module):
        launch.run_pip(f"install {requirement}", f"{requirement} for Alloy")
