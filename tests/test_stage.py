"""The stage convention's base classes: validation naming the flag, hashing, resume refusal."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from deltalens.errors import ConfigError
from deltalens.stage import StageConfig, at_least, one_of, option


@dataclass
class _Cfg(StageConfig):
    k: int = option(32, flag="--k", help="Active latents.")
    kind: str = option("topk", flag="--architecture", help="SAE kind.")
    layers: list[int] = option(default_factory=lambda: [6], flag="--layers")

    def validate(self) -> None:
        at_least(self, "k", 1)
        one_of(self, "kind", ("topk", "relu"))


def test_validation_names_the_flag_and_value() -> None:
    with pytest.raises(ConfigError, match=r"--k must be ≥ 1, got 0"):
        _Cfg(k=0)
    with pytest.raises(ConfigError, match=r"--architecture must be one of topk, relu; got 'gated'"):
        _Cfg(kind="gated")


def test_hash_and_differences() -> None:
    a, b = _Cfg(), _Cfg(k=16)
    assert a.hash() == _Cfg().hash() != b.hash()
    assert b.differences(a.to_dict()) == ["k: 32 → 16"]
    with pytest.raises(ConfigError, match=r"made with another configuration \(k: 32 → 16\)"):
        b.check_resume(a.to_dict(), "ckpt")
    a.check_resume(a.to_dict(), "ckpt")
    assert _Cfg.from_dict(b.to_dict()) == b
    with pytest.raises(ConfigError, match="unknown _Cfg key"):
        _Cfg.from_dict({"k": 3, "bogus": 1})


def test_cli_option_shares_the_default() -> None:
    from deltalens.cli._common import config_option

    opt = config_option(_Cfg, "k")
    assert opt.default == 32 and "--k" in opt.param_decls
    assert config_option(_Cfg, "layers").default == "6"
