"""``python -m echovl.train``: EasyR1's config conventions plus the ``echo:`` section, the configs/ files, the CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="EasyR1 (package verl) is not installed: pip install -e '.[easyr1]'")

from tests.easyr1_stubs import install_vllm_stub, write_vllm_stub  # noqa: E402

install_vllm_stub()

from echovl.easyr1.config import ConfigError, EasyR1EchoConfig, EchoActorConfig, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GEO3K = "config=configs/geo3k_grpo_echo.yaml"


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths are relative to the launch folder, as in EasyR1


def test_geo3k_config_has_the_paper_settings():
    config = load_config([GEO3K])
    assert config.data.rollout_batch_size == 128
    assert config.worker.actor.global_batch_size == 64
    assert config.worker.rollout.n == 8
    assert config.worker.rollout.temperature == 0.6
    assert config.echo.enable and config.echo.coef == 0.001 and config.echo.delimiters == ["\n"]
    assert config.worker.actor.model.model_path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert config.data.format_prompt == str(ROOT / "configs/format_prompt/math_think.jinja")
    assert config.worker.reward.reward_function == str(ROOT / "echovl/reward/math.py")
    assert config.worker.reward.reward_function_name == "compute_score"
    assert config.data.prompt_key == "problem" and config.data.image_key == "images"
    # the echo section reaches the workers through worker.actor
    assert isinstance(config.worker.actor, EchoActorConfig) and config.worker.actor.echo is config.echo


def test_overrides_apply_in_order():
    config = load_config([GEO3K, "echo.coef=0.01", "echo.scope=degenerate", "worker.rollout.n=4", "echo.enable=false"])
    assert config.echo.coef == 0.01 and config.echo.scope == "degenerate" and not config.echo.active
    assert config.worker.rollout.n == 4 and config.worker.actor.echo.coef == 0.01


def test_openr1_config_is_text_only_math():
    config = load_config(["config=configs/openr1_math_grpo_echo.yaml"])
    assert config.worker.actor.model.model_path == "Qwen/Qwen2.5-Math-7B"
    assert config.data.train_files == "data/openr1_math/train.parquet"
    assert config.data.val_files == "data/openr1_math/eval/all.parquet"
    assert config.data.max_prompt_length + config.data.max_response_length <= 4096  # Qwen2.5-Math-7B's context
    assert (config.data.rollout_batch_size, config.worker.actor.global_batch_size) == (128, 64)


def test_defaults_without_a_file():
    config = load_config([])
    assert isinstance(config.echo, EasyR1EchoConfig) and config.echo.coef == 0.001


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([GEO3K, "echo.coeff=0.1"], "unknown config key 'echo.coeff' in the command line. Did you mean 'echo.coef'?"),
        ([GEO3K, "echo.delimeters=[x]"], "Did you mean 'echo.delimiters'?"),
        ([GEO3K, "worker.rollout.temprature=1"], "Did you mean 'worker.rollout.temperature'?"),
        ([GEO3K, "echo.coef=abc"], "invalid value for 'echo.coef' in the command line"),
        ([GEO3K, "echo.coef=-1"], "echo.coef must be a finite number >= 0"),
        ([GEO3K, "echo.success_key=overall"], "must not be 'overall'"),
        ([GEO3K, "coef"], "key=value pairs"),
        (["config=configs/nope.yaml"], "config file not found: configs/nope.yaml"),
        (
            [GEO3K, "algorithm.online_filtering=true", "algorithm.adv_estimator=gae"],
            "with 'gae' set echo.keep_filtered_clips=0",
        ),
    ],
)
def test_bad_config_is_rejected_clearly(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?").replace(".", r"\.")):
        load_config(args)


def test_dapo_with_a_critic_trains_echo_on_the_kept_groups_only():
    args = [GEO3K, "algorithm.online_filtering=true", "algorithm.adv_estimator=gae"]
    config = load_config([*args, "echo.keep_filtered_clips=0"])
    assert config.echo.enable and config.echo.keep_filtered_clips == 0
    assert load_config([*args, "echo.enable=false"]).algorithm.adv_estimator == "gae"


def test_misspelt_key_in_a_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        (ROOT / "configs/geo3k_grpo_echo.yaml").read_text().replace("  min_step_tokens:", "  min_step_token:")
    )
    with pytest.raises(
        ConfigError, match=rf"'echo\.min_step_token' in {path}\. Did you mean 'echo\.min_step_tokens'\?"
    ):
        load_config([f"config={path}"])


def test_missing_files_are_named_before_easyr1_drops_them(tmp_path):
    with pytest.raises(ConfigError, match="data.train_files: no such file or folder: data/geometry3k/train.parquet"):
        load_config([GEO3K], check_files=True)
    data = tmp_path / "train.parquet"
    data.write_bytes(b"")
    ok = [GEO3K, f"data.train_files={data}", f"data.val_files={data}"]
    load_config(ok, check_files=True)
    with pytest.raises(ConfigError, match="data.format_prompt: file not found: ./nope.jinja"):
        load_config([*ok, "data.format_prompt=./nope.jinja"], check_files=True)
    with pytest.raises(ConfigError, match="worker.reward.reward_function: file not found: ./nope.py"):
        load_config([*ok, "worker.reward.reward_function=./nope.py:compute_score"], check_files=True)


def test_a_worker_guidance_value_that_differs_from_the_guidance_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config([GEO3K, "worker.actor.guidance.method=uft"])
    assert str(error.value).startswith(
        "worker.actor.guidance.method='uft' in the command line conflicts with guidance.method='none'"
    )
    assert "set guidance.method (and leave worker.actor.guidance.method unset)" in str(error.value)
    path = tmp_path / "run.yaml"
    path.write_text("worker:\n  actor:\n    guidance:\n      hint_steps: 50\n")
    with pytest.raises(
        ConfigError, match=rf"worker\.actor\.guidance\.hint_steps=50 in {path} conflicts with guidance\.hint_steps=300"
    ):
        load_config([f"config={path}"])
    # the same value, explicitly: fine
    config = load_config([f"config={path}", "guidance.hint_steps=50"])
    assert config.worker.actor.guidance.hint_steps == config.guidance.hint_steps == 50
    config = load_config(["config=configs/openr1_math_uft_echo.yaml", "worker.actor.guidance.method=uft"])
    assert config.worker.actor.guidance.method == "uft"


def test_worker_copies_are_compared_resolved(tmp_path):
    # an interpolation of the section's own value is that value, not a conflict
    config = load_config([GEO3K, "worker.actor.echo.coef=${echo.coef}", "echo.coef=0.5"])
    assert config.worker.actor.echo.coef == config.echo.coef == 0.5
    config = load_config([GEO3K, "worker.actor.guidance.hint_steps=${guidance.hint_steps}"])
    assert config.worker.actor.guidance.hint_steps == 300
    # an interpolation of another value is compared by what it resolves to
    with pytest.raises(ConfigError) as error:
        load_config([GEO3K, "worker.actor.echo.coef=${algorithm.kl_coef}", "algorithm.kl_coef=0.02"])
    assert str(error.value).startswith(
        "worker.actor.echo.coef=${algorithm.kl_coef} (= 0.02) in the command line conflicts with echo.coef=0.001"
    )
    assert load_config([GEO3K, "worker.actor.echo.coef=${algorithm.kl_coef}", "algorithm.kl_coef=0.001"])
    with pytest.raises(ConfigError, match=r"cannot resolve 'worker\.actor\.echo\.coef'.*trainer\.nope"):
        load_config([GEO3K, "worker.actor.echo.coef=${trainer.nope}"])
    # of two sources, the last one counts (as in the merge)
    path = tmp_path / "run.yaml"
    path.write_text("worker:\n  actor:\n    echo:\n      coef: 0.01\n")
    assert load_config([f"config={path}", "worker.actor.echo.coef=${echo.coef}"]).worker.actor.echo.coef == 0.001


def _subprocess_env(tmp_path):
    stub = write_vllm_stub(tmp_path / "stub")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(stub), str(ROOT)])}


def test_cli_rejects_a_misspelt_echo_key(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "echovl.train", GEO3K, "echo.coeff=0.1"],
        cwd=ROOT,
        env=_subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("echovl.train: unknown config key 'echo.coeff'") and "Did you mean 'echo.coef'?" in last
    assert "Traceback" not in result.stderr


def test_without_easyr1_the_entry_point_says_how_to_install(monkeypatch, capsys):
    import importlib.util

    from echovl import train

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "verl" else real(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        train.main([GEO3K])
    assert exit_info.value.code == 1
    assert "pip install -e '.[easyr1]'" in capsys.readouterr().err


LAUNCH_SCRIPTS = {
    "geo3k_grpo_echo.sh": "Qwen/Qwen2.5-VL-7B-Instruct",
    "geo3k_grpo.sh": "Qwen/Qwen2.5-VL-7B-Instruct",
    "geo3k_dapo_echo.sh": "Qwen/Qwen2.5-VL-7B-Instruct",
    "geo3k_qwen3vl_grpo_echo.sh": "Qwen/Qwen3-VL-4B-Instruct",
    "openr1_math_grpo_echo.sh": "Qwen/Qwen2.5-Math-7B",
    "openr1_math_qwen3_grpo_echo.sh": "Qwen/Qwen3-8B-Base",
    "openr1_math_grpo.sh": "Qwen/Qwen2.5-Math-7B",
    "openr1_math_luffy_echo.sh": "Elliott/Qwen2.5-Math-7B-16k-think",
    "openr1_math_luffy.sh": "Elliott/Qwen2.5-Math-7B-16k-think",
    "openr1_math_uft_echo.sh": "Elliott/Qwen2.5-Math-7B-16k-think",
    "openr1_math_uft.sh": "Elliott/Qwen2.5-Math-7B-16k-think",
}
"""Every launch script in configs/ and the model it trains by default."""


def test_every_launch_script_is_tested():
    """Every training script in configs/ (not the CPU mini-experiment, not the eval_*.sh evaluation scripts)."""
    scripts = [p.name for p in (ROOT / "configs").glob("*.sh") if p.name != "tiny_cpu_echo.sh"]
    assert sorted(name for name in scripts if not name.startswith("eval_")) == sorted(LAUNCH_SCRIPTS)


@pytest.mark.parametrize("script", sorted(LAUNCH_SCRIPTS))
@pytest.mark.parametrize("model_path", [None, "/models/m"])
def test_launch_scripts_build_valid_configs(tmp_path, script, model_path):
    """Each script, with its environment overrides, passes arguments that load into a valid config."""
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    fake_python.chmod(0o755)
    out = tmp_path / "args.txt"
    env = {
        **os.environ,
        "PYTHON": str(fake_python),
        "ARGS_OUT": str(out),
        "TRAIN_FILES": "/data/train.parquet",
        "N_GPUS_PER_NODE": "4",
        "NNODES": "2",
    }
    env.pop("MODEL_PATH", None)
    if model_path is not None:
        env["MODEL_PATH"] = model_path
    subprocess.run(["bash", str(ROOT / "configs" / script), "trainer.max_steps=3"], env=env, check=True, cwd=tmp_path)
    args = out.read_text().splitlines()
    assert args[:2] == ["-m", "echovl.train"]
    config = load_config(args[2:])
    assert config.worker.actor.model.model_path == (model_path or LAUNCH_SCRIPTS[script])
    assert config.data.train_files == "/data/train.parquet"
    rollout = config.worker.rollout  # vLLM must fit one whole sequence in a batch (EasyR1 checks it at start-up)
    assert rollout.max_num_batched_tokens >= config.data.max_prompt_length + config.data.max_response_length
    assert (config.trainer.n_gpus_per_node, config.trainer.nnodes, config.trainer.max_steps) == (4, 2, 3)
    assert config.echo.enable == ("echo" in script)
    assert config.guidance.method == next((m for m in ("luffy", "uft") if m in script), "none")
    if script == "geo3k_dapo_echo.sh":
        assert config.algorithm.online_filtering and config.algorithm.disable_kl
        assert config.algorithm.filter_key == "accuracy"
    if script == "openr1_math_qwen3_grpo_echo.sh":
        assert config.data.max_response_length == 8192  # LUFFY's budget, in Qwen3's context
