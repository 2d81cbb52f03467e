"""`egox tiny-model DIR` never writes over a model folder that is already there, unless asked to (--force)."""
import subprocess
import sys


def _tiny_model(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "egox_ros.cli", "tiny-model", *args], capture_output=True,
                          text=True, timeout=240)


def test_tiny_model_refuses_an_existing_model_folder_unless_forced(tmp_path):
    users = tmp_path / "mine" / "model"
    users.mkdir(parents=True)
    (users / "model_index.json").write_text('{"the user\'s": "own checkpoint"}')
    refused = _tiny_model(str(tmp_path / "mine"))
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "already exists" in refused.stderr, refused.stderr
    assert str(users) in refused.stderr and "--force" in refused.stderr
    assert (users / "model_index.json").read_text() == '{"the user\'s": "own checkpoint"}'
    assert not (tmp_path / "mine" / "lora").exists()

    lora_only = tmp_path / "lora_only"
    (lora_only / "lora").mkdir(parents=True)
    assert _tiny_model(str(lora_only)).returncode == 2 and not (lora_only / "model").exists()

    forced = _tiny_model(str(tmp_path / "mine"), "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    index = (users / "model_index.json").read_text()
    assert "WanImageToVideoPipeline" in index
    assert (tmp_path / "mine" / "lora" / "pytorch_lora_weights.safetensors").stat().st_size > 0
    assert "egox.model_path:=" in forced.stdout
