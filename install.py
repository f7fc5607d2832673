"""Run by the WebUI at start inside its venv: install only what it lacks (never torch, gradio,
fastapi, pydantic, numpy or safetensors, which the WebUI pins)."""
import launch

NEEDED = {"scipy": "scipy", "tqdm": "tqdm"}

for module, requirement in NEEDED.items():
    if not launch.is_installed(module):
        launch.run_pip(f"install {requirement}", f"{requirement} for Alloy")
