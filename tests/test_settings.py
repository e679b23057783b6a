from __future__ import annotations

import pytest

from service.settings import Settings, SettingsError

GOOD_KEY = "k" * 32


def test_development_defaults_need_nothing() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url is None
    assert settings.secret_keys_generated and len(settings.secret_keys[0]) >= 32
    assert settings.port == 8000


def test_values_are_read_and_canonicalised() -> None:
    settings = Settings.from_env(
        {
            "PERCH_SECRET_KEYS": f"{'a' * 32}, {GOOD_KEY}",
            "REDIS_URL": "redis://127.0.0.1:6379/3",
            "PORT": "9000",
            "PERCH_PUBLIC_URL": "HTTPS://Chat.Example.com:443/",
            "PERCH_DEMO_ORIGINS": "https://Demo.example.com",
            "PERCH_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
        }
    )
    assert settings.secret_keys == ("a" * 32, GOOD_KEY) and not settings.secret_keys_generated
    assert settings.public_url == "https://chat.example.com"
    assert settings.demo_origins == ("https://demo.example.com",)
    assert len(settings.trusted_proxies) == 2


@pytest.mark.parametrize(
    ("environ", "hint"),
    [
        pytest.param(
            {"PERCH_ENV": "production", "REDIS_URL": "redis://r"}, "PERCH_SECRET_KEYS is required", id="prod-no-keys"
        ),
        pytest.param(
            {"PERCH_ENV": "production", "PERCH_SECRET_KEYS": GOOD_KEY}, "REDIS_URL is required", id="prod-no-redis"
        ),
        pytest.param({"PERCH_ENV": "staging"}, "PERCH_ENV must be one of", id="bad-env"),
        pytest.param({"PERCH_SECRET_KEYS": "short"}, "at least 32 characters", id="short-key"),
        pytest.param({"PORT": "eighty"}, "PORT must be a whole number", id="port-word"),
        pytest.param({"PORT": "70000"}, "PORT must be between", id="port-range"),
        pytest.param({"REDIS_URL": "localhost:6379"}, "REDIS_URL must start with", id="redis-scheme"),
        pytest.param({"OPENAI_BASE_URL": "ftp://x"}, "OPENAI_BASE_URL must be an http", id="base-url"),
        pytest.param({"PERCH_PUBLIC_URL": "https://x.example.com/path"}, "PERCH_PUBLIC_URL", id="public-url-path"),
        pytest.param({"PERCH_TRUSTED_PROXIES": "not-an-ip"}, "PERCH_TRUSTED_PROXIES", id="proxies"),
        pytest.param({"PERCH_REDIS_TIMEOUT_SECONDS": "soon"}, "number of seconds", id="timeout-word"),
    ],
)
def test_bad_settings_fail_with_a_sentence_that_says_how_to_fix_them(environ: dict[str, str], hint: str) -> None:
    with pytest.raises(SettingsError, match=hint):
        Settings.from_env(environ)
