from __future__ import annotations

import pytest

from recsys_tasks.config import ConfigError, load_settings, mask_password


def test_env_then_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("RECSYS_EPOCHS", "3")
    monkeypatch.setenv("RECSYS_DEVICE", "cpu")
    s = load_settings(home=tmp_path, epochs=5)
    assert (s.epochs, s.device) == (5, "cpu")
    assert s.resolved_db_url == f"sqlite:///{(tmp_path / 'catalog.db').resolve()}"
    assert s.resolved_milvus_uri.endswith("milvus.db")


@pytest.mark.parametrize("bad", [{"device": "tpu"}, {"embed_dim": 0}, {"epochs": -1}, {"sampler": "x"},
                                 {"quality_margin": 1.5}])
def test_bad_settings_are_rejected(bad: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        load_settings(**bad)


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_EPOCHS", "many")
    with pytest.raises(ConfigError, match="RECSYS_EPOCHS"):
        load_settings()


def test_passwords_never_printed() -> None:
    assert "s3cret" not in mask_password("mysql+pymysql://app:s3cret@db:3306/recsys")
    assert "s3cret" not in mask_password("http://root:s3cret@milvus:19530")
    assert load_settings(db_url="mysql+pymysql://app:s3cret@db/recsys").public()["db_url"].count("***") == 1


def test_boolean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_SKIP_CHECKSUM", "yes")
    assert load_settings().skip_checksum is True
    monkeypatch.setenv("RECSYS_SKIP_CHECKSUM", "maybe")
    with pytest.raises(ConfigError, match="RECSYS_SKIP_CHECKSUM"):
        load_settings()


def test_home_given_as_text_is_a_path(tmp_path) -> None:
    from recsys_tasks.config import load_settings

    settings = load_settings(home=str(tmp_path / "h"))
    assert settings.artifacts == tmp_path / "h" / "artifacts"
    assert settings.resolved_milvus_uri.endswith("/h/milvus.db")
