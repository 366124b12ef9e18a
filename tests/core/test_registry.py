"""Registries: duplicates raise, builders are found by name or dotted path."""

from __future__ import annotations

import pytest

from e2ekit.core.errors import ConfigError
from e2ekit.core.registry import MODELS, Registry, list_models, locate


def test_register_get_build_and_list() -> None:
    reg: Registry = Registry("widget")

    @reg.register("square")
    def square(side: int = 2) -> int:
        return side * side

    assert reg.names() == ["square"]
    assert reg.build({"type": "square", "side": 3}) == 9
    assert reg.build("square") == 4
    assert "square" in reg


def test_duplicate_name_raises() -> None:
    reg: Registry = Registry("widget")
    reg.register("a")(lambda: 1)
    with pytest.raises(KeyError, match="already registered"):
        reg.register("a")(lambda: 2)


def test_unknown_name_suggests_closest() -> None:
    reg: Registry = Registry("loss")
    reg.register("cross_entropy")(lambda: 0)
    with pytest.raises(ConfigError, match="did you mean 'cross_entropy'"):
        reg.get("cross_entropyy")


def test_unknown_kwarg_is_named() -> None:
    reg: Registry = Registry("model")
    reg.register("net")(lambda width=1: width)
    with pytest.raises(ConfigError, match=r"model.widht.*did you mean 'width'"):
        reg.build({"type": "net", "widht": 3})


def test_dotted_path_builds_user_code() -> None:
    reg: Registry = Registry("model")
    built = reg.build({"type": "collections:OrderedDict"})
    assert type(built).__name__ == "OrderedDict"
    assert locate("os.path:join") is locate("os.path.join")
    with pytest.raises(ConfigError, match="cannot import"):
        locate("no_such_pkg_xyz:thing")


def test_toy_models_registered() -> None:
    import e2ekit.toy.model  # noqa: F401

    assert {"toy_mlp", "toy_mlp_tiny"} <= set(list_models())
    assert MODELS.get("toy_mlp") is not None
