import pytest
from omegaconf import OmegaConf

from echovl.config import EchoConfig, GuidanceConfig


def test_defaults_are_the_paper_settings():
    config = EchoConfig()
    assert config.enable is True
    assert config.coef == 0.001
    assert config.delimiters == ["\n"]
    assert config.min_step_tokens == 2  # measured: the same clips as 1 on every trace (docs/echo_settings.md)
    assert config.scope == "all"
    assert config.success_key == "accuracy"
    assert config.success_threshold == 1.0
    assert config.active


@pytest.mark.parametrize(
    "key,value",
    [
        ("coef", -0.1),
        ("coef", float("nan")),
        ("coef", "big"),
        ("delimiters", []),
        ("delimiters", [""]),
        ("delimiters", "\n"),
        ("min_step_tokens", 0),
        ("min_step_tokens", 1.5),
        ("scope", "degenerated"),
        ("success_key", ""),
        ("success_key", "overall"),
        ("success_threshold", float("inf")),
        ("enable", "yes"),
        ("trace_freq", -1),
        ("trace_groups", 0),
        ("entropy_chunk_size", 0),
    ],
)
def test_invalid_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"echo.{key}"):
        EchoConfig(**{key: value})


def test_inactive_when_disabled_or_zero_coef():
    assert not EchoConfig(enable=False).active
    assert not EchoConfig(coef=0.0).active


def test_from_dict_rejects_unknown_keys_with_suggestion():
    with pytest.raises(ValueError, match=r"Unknown key echo.coeff.*Did you mean echo.coef"):
        EchoConfig.from_dict({"coeff": 0.1})
    assert EchoConfig.from_dict({"coef": 0.1, "scope": "degenerate"}).scope == "degenerate"


def test_works_as_an_omegaconf_structured_section():
    schema = OmegaConf.structured(EchoConfig)
    merged = OmegaConf.merge(schema, OmegaConf.from_dotlist(["coef=0.01", "delimiters=['\\n', '。']"]))
    config = OmegaConf.to_object(merged)
    assert isinstance(config, EchoConfig)
    assert config.coef == 0.01 and config.delimiters == ["\n", "。"]
    with pytest.raises(Exception, match="coeff"):
        OmegaConf.merge(schema, OmegaConf.from_dotlist(["coeff=0.01"]))
    with pytest.raises(ValueError, match="echo.scope"):
        OmegaConf.to_object(OmegaConf.merge(schema, {"scope": "nope"}))


def test_literal_backslash_n_from_the_command_line_means_newline():
    assert EchoConfig(delimiters=["\\n", "。\\n\\n"]).delimiters == ["\n", "。\n\n"]
    merged = OmegaConf.merge(OmegaConf.structured(EchoConfig), OmegaConf.from_dotlist(['delimiters=["\\n"]']))
    assert OmegaConf.to_object(merged).delimiters == ["\n"]


# ------------------------------------------------------------------------------------------- guidance:


def test_guidance_defaults_are_the_methods_release_settings():
    config = GuidanceConfig()
    assert config.method == "none" and not config.active
    assert config.solution_key == "solution"
    assert (config.shaping_gamma, config.adv_std, config.clip_on_policy) == (0.1, False, True)  # LUFFY
    assert not config.expert_in_clip_pool
    assert (config.hint_low, config.hint_high, config.hint_steps, config.hint_coef) == (0.05, 0.95, 300, 0.001)  # UFT
    assert (config.hint_max_parts, config.hint_split) == (5, "lines")
    assert GuidanceConfig(method="luffy").luffy and GuidanceConfig(method="uft").uft


@pytest.mark.parametrize(
    "key,value",
    [
        ("method", "sft"),
        ("method", None),
        ("solution_key", ""),
        ("shaping_gamma", 0.0),
        ("shaping_gamma", float("nan")),
        ("shaping_gamma", "small"),
        ("adv_std", "no"),
        ("clip_on_policy", 1),
        ("expert_in_clip_pool", None),
        ("hint_low", -0.1),
        ("hint_high", 1.5),
        ("hint_steps", 0),
        ("hint_steps", 2.5),
        ("hint_coef", -1e-3),
        ("hint_max_parts", 0),
        ("hint_split", "words"),
    ],
)
def test_guidance_invalid_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"guidance.{key}"):
        GuidanceConfig(**{key: value})


def test_guidance_low_above_high_is_an_error():
    with pytest.raises(ValueError, match="guidance.hint_low"):
        GuidanceConfig(hint_low=0.9, hint_high=0.5)


def test_guidance_from_dict_rejects_unknown_keys_with_suggestion():
    with pytest.raises(ValueError, match=r"Unknown key guidance.shaping_gama.*Did you mean guidance.shaping_gamma"):
        GuidanceConfig.from_dict({"shaping_gama": 0.2})
    assert GuidanceConfig.from_dict({"method": "uft", "hint_coef": 0.0}).hint_coef == 0.0
    schema = OmegaConf.structured(GuidanceConfig)
    with pytest.raises(Exception, match="hint_step"):
        OmegaConf.merge(schema, OmegaConf.from_dotlist(["hint_step=10"]))
