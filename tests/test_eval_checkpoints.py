"""What --model accepts: Hugging Face folders, EasyR1 checkpoints (merged or not), hub names; clear errors else."""

import time

import pytest

from echovl.eval.benchmarks import EvalError
from echovl.eval.checkpoints import resolve_model


def hf_folder(path, weights="model.safetensors"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    if weights:
        (path / weights).write_bytes(b"weights")
    return path


def easyr1_checkpoint(root, step=10, world=2, merged=False):
    actor = root / "exp_echo" / f"global_step_{step}" / "actor"
    actor.mkdir(parents=True)
    for rank in range(world):
        for kind in ("model", "optim", "extra_state"):
            (actor / f"{kind}_world_size_{world}_rank_{rank}.pt").write_bytes(b"shard")
    hf_folder(actor / "huggingface", weights="model.safetensors" if merged else None)
    return actor.parent


def test_hugging_face_folder_and_name(tmp_path):
    model = resolve_model(str(hf_folder(tmp_path / "Qwen2.5-Math-7B")))
    assert model.name == "Qwen2.5-Math-7B" and model.path == str(tmp_path / "Qwen2.5-Math-7B")
    named = resolve_model(f"baseline={tmp_path / 'Qwen2.5-Math-7B'}")
    assert named.name == "baseline" and named.path == model.path
    assert resolve_model(str(hf_folder(tmp_path / "sharded", "model-00001-of-00002.safetensors"))).name == "sharded"
    assert resolve_model(str(hf_folder(tmp_path / "old", "pytorch_model.bin"))).name == "old"


def test_fingerprint_follows_the_files(tmp_path):
    folder = hf_folder(tmp_path / "m")
    before = resolve_model(str(folder)).fingerprint
    assert resolve_model(str(folder)).fingerprint == before
    time.sleep(0.01)
    (folder / "model.safetensors").write_bytes(b"retrained weights")
    assert resolve_model(str(folder)).fingerprint != before


def test_unmerged_easyr1_checkpoint_gives_the_merge_command(tmp_path):
    step = easyr1_checkpoint(tmp_path, step=20, world=4)
    for spec in (step, step / "actor", step / "actor" / "huggingface"):
        with pytest.raises(EvalError) as error:
            resolve_model(str(spec))
        message = str(error.value)
        assert "4 FSDP shard(s) of world size 4" in message
        assert f"python3 scripts/model_merger.py --local_dir {(step / 'actor').resolve()}" in message
        assert "hiyouga/EasyR1" in message


def test_merged_easyr1_checkpoint_is_used_through_its_huggingface_folder(tmp_path):
    step = easyr1_checkpoint(tmp_path, step=30, merged=True)
    for spec in (step, step / "actor", step / "actor" / "huggingface"):
        model = resolve_model(str(spec))
        assert model.path == str(step / "actor" / "huggingface")
        assert model.name == "exp_echo/global_step_30"


def test_training_run_folder_points_at_its_checkpoints(tmp_path):
    easyr1_checkpoint(tmp_path, step=5)
    easyr1_checkpoint(tmp_path, step=15)
    with pytest.raises(EvalError, match=r"training run with 2 checkpoint\(s\).*global_step_15"):
        resolve_model(str(tmp_path / "exp_echo"))


def test_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalError, match="is not a model folder"):
        resolve_model(str(tmp_path / "empty"))
    hf_folder(tmp_path / "config_only", weights=None)
    with pytest.raises(EvalError, match="is not a model folder"):
        resolve_model(str(tmp_path / "config_only"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(EvalError, match="is a file"):
        resolve_model(str(tmp_path / "file.bin"))
    with pytest.raises(EvalError, match="no such folder"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(EvalError, match="model name"):
        resolve_model(f"={tmp_path}")


def test_hub_name_is_passed_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = resolve_model("Qwen/Qwen2.5-Math-7B")
    assert (model.name, model.path, model.fingerprint) == (
        "Qwen/Qwen2.5-Math-7B",
        "Qwen/Qwen2.5-Math-7B",
        "hub:Qwen/Qwen2.5-Math-7B",
    )
