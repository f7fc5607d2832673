"""`python -m merger …` end to end on tiny checkpoints with real SD1 key names."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merger.cli import main
from tests.fixtures import write_tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {n: write_tiny(d / f"{n}.safetensors", "sd1", seed=s) for n, s in (("a", 1), ("b", 2), ("c", 3))}


def _run(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "merger", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_merge_subprocess_progress_and_recipe_rerun(models, tmp_path):
    out, recipe = tmp_path / "m.safetensors", tmp_path / "r.json"
    p = _run("merge", "--model-a", models["a"], "--model-b", models["b"], "--model-c", models["c"],
             "--mode", "Add difference", "--alpha", "0.6", "--alpha-blocks", "GRAD_V",
             "--out", out, "--recipe-out", recipe)
    assert p.returncode == 0, p.stderr
    assert "merging" in p.stderr  # tqdm bar on stderr
    assert "keys merged" in p.stdout
    r = json.loads(recipe.read_text())
    assert r["mode"] == "add_difference" and r["alpha_blocks"] == "GRAD_V" and len(r["hashes"]["c"]) == 64
    out2 = tmp_path / "again.safetensors"
    p = _run("run", recipe, "--models-dir", models["a"].parent, "--out", out2, "--quiet")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "" and p.stderr == ""
    assert out.read_bytes() == out2.read_bytes()


def test_errors_are_one_sentence_exit_2(models, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    xl = write_tiny(tmp_path / "xl.safetensors", "sdxl", seed=5)
    evil = tmp_path / "evil.ckpt"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil.write_bytes(pickle.dumps({"state_dict": {"x": Evil()}}))
    cases = [
        (["--model-b", tmp_path / "missing.safetensors"], "missing.safetensors"),
        (["--model-b", xl], "SDXL"),
        (["--model-b", evil], "evil.ckpt"),
        (["--model-b", models["b"], "--mode", "bogus"], "bogus"),
        (["--model-b", models["b"], "--calc", "cosineA", "--mode", "add_difference", "--model-c", models["c"]],
         "cosine"),
        (["--model-b", models["b"], "--calc", "extract", "--model-c", models["c"], "--alpha", "1.5"], "alpha"),
        (["--model-b", models["b"], "--alpha-blocks", "0.5,0.5"], "26"),
        (["--model-b", models["b"], "--adjust", "1,2,3"], "8"),
    ]
    for extra, needle in cases:
        code = main(["merge", "--model-a", str(models["a"]), *map(str, extra), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (extra, err)
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
        assert needle.lower() in err.lower(), (needle, err)
        assert not out.exists()
    assert not (tmp_path / "pwned").exists()


def test_overwrite_rule(models, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    args = ["merge", "--model-a", str(models["a"]), "--model-b", str(models["b"]), "--out", str(out), "--quiet"]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(args + ["--overwrite"]) == 0
    assert len(load_file(str(out))) > 1000


def test_ckpt_input_loads_safely(models, tmp_path):
    ckpt = tmp_path / "b.ckpt"
    torch.save({"state_dict": load_file(str(models["b"])), "global_step": 5}, ckpt)
    out = tmp_path / "o.safetensors"
    assert main(["merge", "--model-a", str(models["a"]), "--model-b", str(ckpt), "--alpha", "1",
                 "--dtype", "keep", "--out", str(out), "--quiet"]) == 0
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    assert torch.equal(load_file(str(out))[key], load_file(str(models["b"]))[key])


def test_inspect_and_presets(models, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    assert main(["merge", "--model-a", str(models["a"]), "--model-b", str(models["b"]), "--out", str(out),
                 "--quiet", "--alpha", "0.4"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "sd1" and info["recipe"]["alpha"] == 0.4
    assert info["blocks"]["OUT11"] > 0 and info["keys"] == len(load_file(str(out)))
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "architecture:  sd1" in text and "embedded Alloy recipe" in text
    assert main(["presets", "--arch", "sdxl"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    grad = [ln for ln in lines if ln.startswith("GRAD_V\t")][0]
    assert len(grad.split("\t")[1].split(",")) == 20


def test_ui_subcommand_parses_its_own_options(tmp_path, capsys):
    assert main(["ui", "--models-dir", str(tmp_path / "nowhere"), "--port", "7999", "--no-browser"]) == 2
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["ui", "--help"])
    assert e.value.code == 0 and "--models-dir" in capsys.readouterr().out
