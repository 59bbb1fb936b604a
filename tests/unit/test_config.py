"""Settings come from DETSERVE_* variables at call time, typed, with working defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from detserve.config import MissingToken, Settings, admin_token


def test_defaults_work_locally(tmp_path):
    s = Settings.from_env(environ={"DETSERVE_DATA_DIR": str(tmp_path)})
    assert s.database_url == f"sqlite:///{tmp_path / 'detserve.db'}"
    assert s.redis_url == ""  # `detserve up` embeds one
    assert s.autostop_hour_seconds == 3600.0
    assert s.max_model_bytes == 500 * 1024 * 1024 and s.max_image_pixels == 50_000_000


def test_values_are_typed(tmp_path):
    s = Settings.from_env(environ={"DETSERVE_DATA_DIR": str(tmp_path), "DETSERVE_WORKER_CONCURRENCY": "3",
                                   "DETSERVE_AUTOSTOP_HOUR_SECONDS": "2.5", "DETSERVE_PRICE_GPU": "9"})
    assert s.worker_concurrency == 3 and s.autostop_hour_seconds == 2.5
    assert s.prices["gpu"] == 9.0 and isinstance(s.data_dir, Path)


def test_round_trip_through_a_child_environment(tmp_path):
    s = Settings.from_env(environ={"DETSERVE_DATA_DIR": str(tmp_path), "DETSERVE_REDIS_URL": "redis://x/1"})
    assert Settings.from_env(environ=s.to_env()) == s


def test_admin_token_comes_from_the_environment_else_the_data_dir(tmp_path):
    assert admin_token(Settings(data_dir=tmp_path, admin_token=" env-token\n").resolved()) == "env-token"
    (tmp_path / "admin_token").write_text("kept-token\n")
    assert admin_token(Settings(data_dir=tmp_path).resolved()) == "kept-token"
    # a blank variable does not hide the kept token
    assert admin_token(Settings(data_dir=tmp_path, admin_token="  ").resolved()) == "kept-token"


@pytest.mark.parametrize("kept", [None, "", " \n\t"])
def test_an_empty_or_whitespace_admin_token_is_never_one(tmp_path, kept):
    if kept is not None:
        (tmp_path / "admin_token").write_text(kept)
    for env_token in ("", "   "):
        with pytest.raises(MissingToken, match="DETSERVE_ADMIN_TOKEN"):
            admin_token(Settings(data_dir=tmp_path, admin_token=env_token).resolved())
    assert not (tmp_path / "admin_token").exists() or kept is not None  # nothing was made up
