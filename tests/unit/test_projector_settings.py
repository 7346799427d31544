"""The projector's settings: group and batch size from env, validated."""

from __future__ import annotations

import pytest

from rolebus.config import load_settings
from rolebus.errors import ConfigError
from rolebus.projectors.projector import default_group


def test_group_defaults_to_the_app_id_and_can_be_set() -> None:
    settings = load_settings(env={"ROLEBUS_APP_ID": "shop"}, config_file=None)
    assert settings.projector_group is None and default_group(settings) == "shop-projector"
    assert settings.projector_batch == 2000
    env = {"ROLEBUS_PROJECTOR_GROUP": "p-1", "ROLEBUS_PROJECTOR_BATCH": "50"}
    custom = load_settings(env=env, config_file=None)
    assert (custom.projector_group, custom.projector_batch) == ("p-1", 50)


@pytest.mark.parametrize(
    ("name", "value"), [("ROLEBUS_PROJECTOR_BATCH", "0"), ("ROLEBUS_PROJECTOR_GROUP", "a b")]
)
def test_bad_values_name_the_setting(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(env={name: value}, config_file=None)
