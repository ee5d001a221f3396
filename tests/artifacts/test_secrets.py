"""The one rule for secret-looking environment names, and redaction of what `vitrine jobs` prints."""

from __future__ import annotations

import json

import pytest

from artifacts.secrets import REDACTED, is_secret_name, redact, without_secrets


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "RAY_AUTH_TOKEN",
                                  "VITRINE_API_KEY", "VITRINE_API_KEYS", "DB_PASSWORD", "client_secret", "KEY",
                                  "GOOGLE_APPLICATION_CREDENTIALS", "SSH_PRIVATE_KEY"])
def test_secret_looking_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
                                  "VITRINE_STORAGE", "VITRINE_S3_ENDPOINT", "RAY_AUTH_MODE", "TF_CPP_MIN_LOG_LEVEL",
                                  "MONKEY_PATCH", "KEYBOARD", "vitrine_job"])
def test_settings_are_not_secrets(name):
    assert not is_secret_name(name)


def test_without_secrets_keeps_the_settings():
    env = {"AWS_ENDPOINT_URL": "http://s3:9000", "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    assert without_secrets(env) == {"AWS_ENDPOINT_URL": "http://s3:9000"}


def job_row(secret: str) -> dict:
    """A row shaped like ``JobDetails.model_dump(mode="json")`` for a job someone submitted with keys."""
    return {
        "type": "SUBMISSION", "job_id": "02000000", "submission_id": "raw-1", "status": "SUCCEEDED",
        "entrypoint": f"env AWS_SECRET_ACCESS_KEY={secret} python -m jobs.cli models",
        "message": None, "start_time": 1, "end_time": 2,
        "metadata": {"vitrine_job": "models", "api_token": secret},
        "runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip",
                        "env_vars": {"AWS_ENDPOINT_URL": "http://s3:9000", "AWS_SECRET_ACCESS_KEY": secret,
                                     "AWS_SESSION_TOKEN": secret},
                        "excludes": ["/.git"]},
        "driver_info": {"id": "01", "node_ip_address": "10.0.0.1", "pid": "7"},
    }


def test_redact_hides_every_secret_value_of_a_job_row_and_keeps_the_rest():
    secret = "wJalrXUtnFEMI-K7MDENG"
    row = job_row(secret)
    out = redact(row)
    assert secret not in json.dumps(out)
    assert out["runtime_env"]["env_vars"] == {"AWS_ENDPOINT_URL": "http://s3:9000", "AWS_SECRET_ACCESS_KEY": REDACTED,
                                              "AWS_SESSION_TOKEN": REDACTED}
    assert out["metadata"] == {"vitrine_job": "models", "api_token": REDACTED}
    assert out["entrypoint"] == f"env AWS_SECRET_ACCESS_KEY={REDACTED} python -m jobs.cli models"
    assert out["runtime_env"]["excludes"] == ["/.git"] and out["driver_info"] == row["driver_info"]
    assert row["runtime_env"]["env_vars"]["AWS_SECRET_ACCESS_KEY"] == secret  # a copy; the input is untouched


def test_redact_reaches_json_inside_strings_and_lists():
    text = 'ray job submit --runtime-env-json \'{"env_vars": {"AWS_SESSION_TOKEN": "tok\\"en", "A": "b"}}\''
    assert redact([text, ("X_PASSWORD=hunter2", 3)]) == [
        'ray job submit --runtime-env-json \'{"env_vars": {"AWS_SESSION_TOKEN": "***", "A": "b"}}\'',
        ("X_PASSWORD=***", 3)]
