"""What the Serve deploy puts into the application's runtime_env: storage settings, never secrets
(the dashboard and `serve status` show a runtime_env to anyone who can reach them)."""

from __future__ import annotations

import pytest

from serve import deploy


def test_the_app_runtime_env_carries_storage_settings_not_s3_keys(monkeypatch, tmp_path):
    for key, value in {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI",
                       "AWS_SESSION_TOKEN": "FwoGZXIvYXdzE", "AWS_ENDPOINT_URL": "http://s3.internal:9000",
                       "VITRINE_STORAGE": "s3://bucket/vitrine"}.items():
        monkeypatch.setenv(key, value)
    config = deploy.load_config(args={"storage": str(tmp_path)})
    env = config["applications"][0]["runtime_env"]["env_vars"]
    assert env["AWS_ENDPOINT_URL"] == "http://s3.internal:9000" and env["VITRINE_STORAGE"] == "s3://bucket/vitrine"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(env)
    assert "wJalrXUtnFEMI" not in str(config) and "FwoGZXIvYXdzE" not in str(config)


@pytest.mark.parametrize("where", ["app", "deployment"])
def test_a_config_that_sets_a_secret_in_a_runtime_env_is_refused(tmp_path, where):
    import yaml

    config = yaml.safe_load(deploy.CONFIG_FILE.read_text())
    app = config["applications"][0]
    renv = {"env_vars": {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI"}}
    if where == "app":
        app["runtime_env"] = renv
    else:
        app["deployments"][0].setdefault("ray_actor_options", {})["runtime_env"] = renv
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(deploy.DeployError, match="AWS_SECRET_ACCESS_KEY.*secret-looking"):
        deploy.load_config(path, args={"storage": str(tmp_path)}, forward_env=False)
