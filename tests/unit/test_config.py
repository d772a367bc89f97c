from __future__ import annotations

from pathlib import Path

import pytest

from unified_jobs import Config, Jobs
from unified_jobs.config import load_config, render_template
from unified_jobs.errors import ConfigError


def write(tmp_path: Path, env: str, text: str) -> Path:
    (tmp_path / f"{env}.yaml").write_text(text, encoding="utf-8")
    return tmp_path


def test_loads_the_env_file_named_by_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "staging", "workers:\n  mode: ForegroundBlocking\n")
    monkeypatch.setenv("UNIFIED_JOBS_ENV", "staging")
    assert load_config(config_dir=tmp_path).workers.mode == "ForegroundBlocking"


def test_defaults_to_development(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNIFIED_JOBS_ENV", raising=False)
    write(tmp_path, "development", "workers:\n  mode: BackgroundAsync\n  concurrency: 7\n")
    config = load_config(config_dir=tmp_path)
    assert (config.workers.mode, config.workers.concurrency) == ("BackgroundAsync", 7)


def test_full_loco_style_queue_section(tmp_path: Path) -> None:
    write(
        tmp_path,
        "production",
        """
workers:
  mode: BackgroundQueue
queue:
  kind: Redis
  uri: '{{ get_env(name="UJ_TEST_UNSET_URL", default="redis://127.0.0.1:6379/3") }}'
  dangerously_flush: false
  num_workers: 2
  poll_interval_sec: 2
  max_connections: 5
""",
    )
    config = load_config("production", tmp_path)
    assert config.queue is not None
    assert (config.queue.kind, config.queue.uri, config.queue.num_workers) == (
        "Redis",
        "redis://127.0.0.1:6379/3",
        2,
    )


def test_get_env_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UJ_X", "from-env")
    assert render_template('a: {{ get_env(name="UJ_X", default="d") }}') == "a: from-env"
    assert render_template("a: {{get_env(name='UJ_NOT_SET_X',default='d')}}") == "a: d"


def test_get_env_without_default_and_unset_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UJ_MISSING", raising=False)
    with pytest.raises(ConfigError, match="UJ_MISSING is not set"):
        render_template('{{ get_env(name="UJ_MISSING") }}', source="f.yaml")


def test_other_templates_are_refused() -> None:
    with pytest.raises(ConfigError, match="unsupported template"):
        render_template("{{ 1 + 1 }}")


def test_a_wrong_mode_names_file_key_and_accepted_values(tmp_path: Path) -> None:
    write(tmp_path, "development", "workers:\n  mode: Backgroundqueue\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "development.yaml") in message
    assert "workers.mode: got 'Backgroundqueue'" in message
    assert "'BackgroundQueue', 'ForegroundBlocking' or 'BackgroundAsync'" in message


def test_an_unknown_key_names_the_accepted_keys(tmp_path: Path) -> None:
    write(tmp_path, "development", "workers:\n  mode: BackgroundAsync\n  concurency: 3\n")
    with pytest.raises(
        ConfigError, match=r"workers\.concurency: unknown key; accepted keys here: mode, concurrency"
    ):
        load_config(config_dir=tmp_path)


def test_an_unknown_top_level_key(tmp_path: Path) -> None:
    write(tmp_path, "development", "worker:\n  mode: BackgroundAsync\n")
    with pytest.raises(ConfigError, match=r"worker: unknown key; accepted keys here: workers, queue"):
        load_config(config_dir=tmp_path)


def test_a_wrong_type(tmp_path: Path) -> None:
    write(tmp_path, "development", "workers:\n  concurrency: many\n")
    with pytest.raises(ConfigError, match=r"workers\.concurrency: .*valid integer.*'many'"):
        load_config(config_dir=tmp_path)


def test_a_wrong_kind(tmp_path: Path) -> None:
    write(tmp_path, "development", "workers:\n  mode: BackgroundQueue\nqueue:\n  kind: Kafka\n  uri: x\n")
    with pytest.raises(
        ConfigError,
        match=r"queue\.kind: got 'Kafka'; accepted values: 'Redis', 'Postgres', 'Sqlite' or 'RabbitMQ'",
    ):
        load_config(config_dir=tmp_path)


@pytest.mark.parametrize(
    ("queue", "message"),
    [
        ("kind: RabbitMQ\n  uri: amqp://u:secret@h/", r"queue: queue.kind RabbitMQ needs queue.store_uri"),
        ("kind: RabbitMQ\n  uri: redis://h/0\n  store_uri: redis://h/1", r"must be amqp://"),
        ("kind: RabbitMQ\n  uri: amqp://u:secret@h/\n  store_uri: sqlite:///x.db", r"must be a Redis URI"),
        ("kind: Redis\n  uri: redis://h/0\n  store_uri: redis://h/1", r"for the RabbitMQ kind only"),
    ],
)
def test_rabbitmq_uris_are_checked_and_passwords_not_repeated(
    tmp_path: Path, queue: str, message: str
) -> None:
    write(tmp_path, "development", f"workers:\n  mode: BackgroundQueue\nqueue:\n  {queue}\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(config_dir=tmp_path)
    assert "secret" not in str(info.value)


def test_background_queue_needs_a_queue_section(tmp_path: Path) -> None:
    write(tmp_path, "development", "workers:\n  mode: BackgroundQueue\n")
    with pytest.raises(ConfigError, match="there is no queue section"):
        load_config(config_dir=tmp_path)


def test_a_missing_file_lists_the_envs_there_are(tmp_path: Path) -> None:
    write(tmp_path, "test", "{}\n")
    with pytest.raises(ConfigError, match=r"production\.yaml: config file not found .*found envs: test"):
        load_config("production", tmp_path)


def test_bad_yaml_and_non_mapping(tmp_path: Path) -> None:
    write(tmp_path, "a", "workers: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("a", tmp_path)
    write(tmp_path, "b", "- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config("b", tmp_path)


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    write(tmp_path, "development", "")
    assert load_config(config_dir=tmp_path) == Config()


def test_a_uri_of_the_wrong_kind_is_a_config_error_with_the_password_masked() -> None:
    config = Config.from_dict(
        {"workers": {"mode": "BackgroundQueue"}, "queue": {"kind": "Postgres", "uri": "redis://:s3cret@h/0"}}
    )
    with pytest.raises(
        ConfigError, match=r"queue.uri 'redis://:\*\*\*@h/0' is not a usable URL for queue.kind Postgres"
    ) as info:
        Jobs(config)
    assert "s3cret" not in str(info.value)


def test_a_bad_table_prefix_is_refused(tmp_path: Path) -> None:
    write(
        tmp_path,
        "development",
        "workers:\n  mode: BackgroundQueue\n"
        "queue:\n  kind: Sqlite\n  uri: sqlite:///x.db\n  table_prefix: 'drop table;'\n",
    )
    with pytest.raises(ConfigError, match=r"queue\.table_prefix: String should match pattern"):
        load_config(config_dir=tmp_path)
