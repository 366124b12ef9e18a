"""Registries: duplicates raise, builders are found by name or dotted path."""

from __future__ import annotations

import pytest

from e2ekit.core.errors import ConfigError
from e2ekit.core.registry import Registry, locate


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


def test_kits_share_names_without_clashing() -> None:
    seg_models: Registry = Registry("model", kit="seg")
    det_models: Registry = Registry("model", kit="det")
    seg_models.register("net_tiny")(lambda width=1: ("seg", width))
    det_models.register("net_tiny")(lambda depth=1: ("det", depth))
    assert seg_models.build({"type": "net_tiny", "width": 2}) == ("seg", 2)
    assert det_models.build({"type": "net_tiny", "depth": 3}) == ("det", 3)
    with pytest.raises(KeyError, match="seg model 'net_tiny' is already registered"):
        seg_models.register("net_tiny")(lambda: None)
    with pytest.raises(ConfigError, match=r"unknown det model 'net'.*registered: net_tiny"):
        det_models.get("net")
    # the config key stays the section users write; the message names the kit
    with pytest.raises(ConfigError, match=r"config key 'model\.width': det model 'net_tiny'"):
        det_models.build({"type": "net_tiny", "width": 2})


def test_shipped_kits_reuse_a_name_in_their_own_registries() -> None:
    """seg and det both ship a ``mobilenet_v3_large`` backbone: each kit gets its own."""
    from e2ekit.det import backbones as _det  # noqa: F401  (registers det's backbones)
    from e2ekit.det.registry import BACKBONES as DET_BACKBONES
    from e2ekit.seg import backbones as _seg  # noqa: F401  (registers seg's backbones)
    from e2ekit.seg.registry import BACKBONES as SEG_BACKBONES

    seg_builder = SEG_BACKBONES.get("mobilenet_v3_large")
    det_builder = DET_BACKBONES.get("mobilenet_v3_large")
    assert seg_builder.__module__ == "e2ekit.seg.backbones.mobilenet"
    assert det_builder.__module__ == "e2ekit.det.backbones.mobilenet"


def test_toy_models_registered() -> None:
    import e2ekit.toy.model  # noqa: F401
    from e2ekit.toy.registry import MODELS

    assert {"toy_mlp", "toy_mlp_tiny"} <= set(MODELS.names())
    assert MODELS.get("toy_mlp") is not None


def test_a_key_the_kit_passes_itself_is_a_config_error() -> None:
    reg: Registry = Registry("model", kit="toy")

    @reg.register("net")
    def net(num_classes: int, width: int = 4) -> tuple[int, int]:
        return num_classes, width

    assert reg.build({"type": "net", "width": 8}, num_classes=3) == (3, 8)
    with pytest.raises(ConfigError, match=r"'model\.num_classes': the kit sets num_classes"):
        reg.build({"type": "net", "num_classes": 5}, num_classes=3)
