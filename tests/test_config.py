import pytest
from omegaconf import OmegaConf

from echovl.config import EchoConfig


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
