"""Bad config fails before any resource is registered, with one message naming key, value and what is
allowed."""

from __future__ import annotations

import pulumi
import pytest

from model.settings import ConfigError, load_settings
from tests.pulumi_mocks import PROJECT, committed_config, is_secret, plain, run_program


def _with(stack: str, **changes: str) -> dict[str, str]:
    cfg = committed_config(stack)
    cfg.update({f"{PROJECT}:{k}": v for k, v in changes.items()})
    return cfg


CASES = [
    # (stack, changes, key in message, value in message, phrase of what is allowed)
    ("dev", {"apiHostPort": "70000"}, "apiHostPort", "70000", "from 1 to 65535"),
    ("dev", {"adminHostPort": "0"}, "adminHostPort", "0", "from 1 to 65535"),
    ("dev", {"frontendHostPort": "http"}, "frontendHostPort", "http", "integer"),
    ("dev", {"adminHostPort": "5000"}, "adminHostPort", "5000", "not already used by api"),
    ("dev", {"postgresHostPort": "8000"}, "postgresHostPort", "8000", "not already used by frontend"),
    ("dev", {"apiHostPrt": "5001"}, "apiHostPrt", "5001", "did you mean 'apiHostPort'"),
    ("dev", {"postgresImage": "postgres"}, "postgresImage", "postgres", "supported major"),
    ("dev", {"postgresImage": "postgres:13.16"}, "postgresImage", "postgres:13.16", "14-17"),
    ("dev", {"postgresImage": "postgres:18.1"}, "postgresImage", "postgres:18.1", "14-17"),
    ("dev", {"pythonBaseImage": "python:latest"}, "pythonBaseImage", "python:latest", "pinned"),
    ("dev", {"pythonBaseImage": "Python 3!"}, "pythonBaseImage", "Python 3!", "image reference"),
    ("dev", {"appImageName": "app:1.0"}, "appImageName", "app:1.0", "without tag"),
    ("dev", {"apiMemory": "lots"}, "apiMemory", "lots", "256Mi"),
    ("dev", {"postgresMemory": "1Ti"}, "postgresMemory", "1Ti", "256Mi"),
    ("dev", {"adminMemory": "1k"}, "adminMemory", "1k", "at least 6Mi"),
    ("dev", {"environment": "staging"}, "environment", "staging", "one of dev, prod"),
    ("dev", {"postgresHostIp": "0.0.0.0"}, "postgresHostIp", "0.0.0.0", "loopback"),
    ("dev", {"pipIndexUrl": "http://user:pw@mirror/simple"},  # pragma: allowlist secret (a refused example)
     "pipIndexUrl", "http://user:pw@mirror/simple", "without user:password"),  # pragma: allowlist secret
    ("dev", {"pipIndexUrl": "mirror.example/simple"}, "pipIndexUrl", "mirror.example/simple", "http(s) URL"),
    ("dev", {"pipTrustedHost": "http://mirror"}, "pipTrustedHost", "http://mirror", "host name"),
    ("prod", {"adminHostIp": "0.0.0.0"}, "adminHostIp", "0.0.0.0", "loopback address such as 127.0.0.1 in prod"),
    ("prod", {"adminHostIp": "192.168.1.10"}, "adminHostIp", "192.168.1.10", "SSH tunnel"),
    ("prod", {"adminHostIp": "::"}, "adminHostIp", "::", "loopback"),
    ("dev", {"apiHostIp": "localhost:1"}, "apiHostIp", "localhost:1", "IP address"),
    ("dev", {"restartPolicy": "sometimes"}, "restartPolicy", "sometimes", "unless-stopped"),
    ("dev", {"protectData": "yes"}, "protectData", "yes", "true or false"),
    ("dev", {"dbName": "stock-analysis"}, "dbName", "stock-analysis", "SQL identifier"),
    ("dev", {"dbAppUser": "postgres"}, "dbAppUser", "postgres", "other than the superuser"),
    ("dev", {"logMaxSize": "10"}, "logMaxSize", "10", "unit k, m or g"),
    ("dev", {"logMaxFile": "0"}, "logMaxFile", "0", "from 1 to 100"),
    ("prod", {"postgresHostPort": "5446"}, "postgresHostPort", "5446", "prod publishes no database port"),
    ("prod", {"protectData": "false"}, "protectData", "false", "true in prod"),
    ("prod", {"apiMemory": ""}, "apiMemory", "''", "prod sets one on every container"),
    # Issue #8: every role the job manages differs from the superuser and from names PostgreSQL reserves.
    ("dev", {"dbSuperuser": "stock_app_rw"}, "dbSuperuser", "stock_app_rw", "other than the app's roles"),
    ("dev", {"dbSuperuser": "stock_app_b"}, "dbSuperuser", "stock_app_b", "other than the app's roles"),
    ("dev", {"dbAppUser": "pg_app"}, "dbAppUser", "pg_app", "not pg_*"),
    ("dev", {"dbAppUser": "public"}, "dbAppUser", "public", "does not reserve"),
    ("dev", {"dbSuperuser": "pg_monitor"}, "dbSuperuser", "pg_monitor", "not pg_*"),
    ("dev", {"dbName": "template1"}, "dbName", "template1", "not a template database"),
    # Whole values only: no trailing newline or other control character, in any key.
    ("dev", {"dbAppUser": "stock_app\n"}, "dbAppUser", "'stock_app\\n'", "no control"),
    ("dev", {"dbName": "stock\tanalysis"}, "dbName", "'stock\\tanalysis'", "no control"),
    ("dev", {"postgresImage": "postgres:17.6\n"}, "postgresImage", "'postgres:17.6\\n'", "U+000A"),
    ("dev", {"appImageName": "app\r"}, "appImageName", "'app\\r'", "U+000D"),
    ("dev", {"adminUser": "admin\u200b"}, "adminUser", "admin", "U+200B"),
    ("dev", {"apiHostPort": " 5000"}, "apiHostPort", "' 5000'", "integer"),
    ("dev", {"protectData": "true "}, "protectData", "'true '", "true or false"),
    ("dev", {"apiMemory": "256Mi "}, "apiMemory", "'256Mi '", "256Mi"),
]


@pytest.mark.parametrize(("stack", "changes", "key", "value", "allowed"), CASES,
                         ids=[f"{s}-{next(iter(c))}={next(iter(c.values()))}" for s, c, *_ in CASES])
def test_bad_value_fails_before_any_resource(stack: str, changes: dict[str, str], key: str, value: str,
                                             allowed: str) -> None:
    recorded = []
    with pytest.raises(pulumi.RunError) as err:
        recorded.append(run_program(stack, _with(stack, **changes)))
    message = str(err.value)
    assert f"'{PROJECT}:{key}'" in message
    assert value in message
    assert allowed in message
    assert "\n" not in message
    assert recorded == []


def test_failure_registers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import pulumi_mocks

    seen: list[str] = []
    original = pulumi_mocks.RecordingMonitor.RegisterResource

    def spy(self: pulumi_mocks.RecordingMonitor, request: object) -> object:
        seen.append(request.type)  # type: ignore[attr-defined]
        return original(self, request)

    monkeypatch.setattr(pulumi_mocks.RecordingMonitor, "RegisterResource", spy)
    with pytest.raises(pulumi.RunError):
        run_program("dev", _with("dev", apiHostPort="99999"))
    assert [t for t in seen if t != "pulumi:pulumi:Stack"] == []


def test_missing_environment_is_required() -> None:
    with pytest.raises(ConfigError, match="'stock-analyzer:environment' is required"):
        load_settings({}, "dev")


def test_plaintext_password_config_is_refused() -> None:
    with pytest.raises(pulumi.RunError, match=r"postgresPassword' holds a plaintext value.*--secret"):
        run_program("dev", _with("dev", postgresPassword="not-a-secret-value"))  # pragma: allowlist secret


def test_user_supplied_password_replaces_generated_one_and_stays_secret() -> None:
    own = "user-chosen-admin-credential-0123456789"
    rec = run_program("dev", _with("dev", adminPassword=own), secret_keys=("adminPassword",))
    names = {r.name for r in rec.of_type("random:index/randomPassword:RandomPassword")}
    assert names == {"credentials-postgres-password", "credentials-app-db-password", "credentials-backup-db-password",
                     "credentials-postgres-bootstrap-password"}
    assert is_secret(rec.outputs["admin_password"]) and plain(rec.outputs["admin_password"]) == own
    admin = rec.containers()["admin"]
    assert is_secret(admin.inputs["uploads"])
    assert own in {u["content"] for u in plain(admin.inputs["uploads"])}


def test_empty_password_default_means_generate() -> None:
    rec = run_program("dev", _with("dev", adminPassword=""))
    assert len(rec.of_type("random:index/randomPassword:RandomPassword")) == 5


def test_control_character_in_a_password_is_refused_without_echoing_it() -> None:
    own = "user-chosen-admin-credential\n"
    with pytest.raises(pulumi.RunError) as err:
        run_program("dev", _with("dev", adminPassword=own), secret_keys=("adminPassword",))
    assert "'stock-analyzer:adminPassword'" in str(err.value) and "U+000A" in str(err.value)
    assert "user-chosen" not in str(err.value)


@pytest.mark.parametrize("whole", ["stock_app", "postgres:17.6-trixie", "stock-analyzer-app", "512Mi", "10m"])
def test_validation_judges_whole_values(whole: str) -> None:
    """The patterns themselves (not only the control-character check) refuse a suffix after a valid value."""
    from model import settings

    patterns = [settings._IDENT, settings._IMAGE_REF, settings._REPO, settings._MEMORY, settings._LOG_SIZE]
    matching = [p for p in patterns if p.fullmatch(whole)]
    assert matching, whole
    for p in matching:
        assert p.fullmatch(whole + "\n") is None and p.fullmatch(whole + " x") is None


def test_admin_may_listen_beyond_loopback_in_dev_only() -> None:
    dev = load_settings({"environment": "dev", "adminHostIp": "0.0.0.0"}, "dev")
    assert dev.app("admin").ports[0].host_ip == "0.0.0.0"
    prod = {k.split(":", 1)[1]: v for k, v in committed_config("prod").items()}
    assert load_settings({**prod, "adminHostIp": "::1"}, "prod").app("admin").ports[0].host_ip == "::1"


# Passwords from stack config: (value, phrase of the reason). None of them may be echoed.
UNUSABLE = [
    ("", "empty"),
    (" " * 20, "empty or only whitespace"),
    ("\t" * 20, "control"),
    ("fifteen-chars-x", "15 characters; at least 16"),
    (" sixteen-chars-and-more", "starts or ends with whitespace"),
    ("sixteen-chars-and-more ", "starts or ends with whitespace"),
    ("sixteen-chars\u200band-more", "U+200B"),
]


@pytest.mark.parametrize(("value", "reason"), UNUSABLE)
@pytest.mark.parametrize("key", ["adminPassword", "appDbPassword", "backupDbPassword", "postgresPassword"])
def test_unusable_config_passwords_are_refused_before_any_resource(key: str, value: str, reason: str) -> None:
    with pytest.raises(pulumi.RunError) as err:
        run_program("dev", _with("dev", **{key: value}), secret_keys=(key,))
    message = str(err.value)
    assert f"'stock-analyzer:{key}'" in message and reason in message
    if value.strip():
        assert value.strip() not in message


def test_sixteen_characters_are_enough() -> None:
    own = "0123456789abcdef"  # pragma: allowlist secret (a length boundary, not a credential)
    rec = run_program("dev", _with("dev", adminPassword=own), secret_keys=("adminPassword",))
    assert plain(rec.outputs["admin_password"]) == own


def _prod_raw(**changes: str) -> dict[str, str]:
    return {**{k.split(":", 1)[1]: v for k, v in committed_config("prod").items()}, **changes}


@pytest.mark.parametrize(("image", "data_major", "phrase"), [
    ("postgres:14.13", "17", "a downgrade cannot read it, and is refused"),
    ("postgres:16.4", "17", "downgrade"),
    ("postgres:17.6-trixie", "16", "python -m ops upgrade --stack prod --to-image postgres:17.6-trixie"),
])
def test_a_postgres_major_other_than_the_datas_is_refused(image: str, data_major: str, phrase: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(_prod_raw(postgresImage=image, postgresDataMajor=data_major), "prod")
    assert "'stock-analyzer:postgresImage'" in str(err.value) and phrase in str(err.value)


def test_the_program_refuses_a_major_change_before_any_resource() -> None:
    with pytest.raises(pulumi.RunError, match="postgresDataMajor"):
        run_program("prod", _with("prod", postgresImage="postgres:14.13"))


def test_matching_majors_pass() -> None:
    s = load_settings(_prod_raw(postgresImage="postgres:15.8", postgresDataMajor="15"), "prod")
    assert s.postgres_major == 15


@pytest.mark.parametrize(("key", "value"), [("backupIntervalMinutes", "0"), ("backupIntervalMinutes", "4"),
                                            ("backupKeep", "0"), ("backupKeep", "1001"),
                                            ("backupKeepDaily", "-1"), ("backupKeepWeekly", "1001"),
                                            ("backupKeepMonthly", "x")])
def test_backup_schedule_bounds(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_settings(_prod_raw(**{key: value}), "prod")


def test_prod_backups_outlive_destroy_like_the_data() -> None:
    rec = run_program("prod")
    for name in ("database-data", "database-backups"):
        volume = rec.named(name)
        assert volume.protect is True and volume.retain_on_delete is True, name
    backup = rec.containers()["db-backup"].inputs
    env = dict(e.split("=", 1) for e in backup["envs"])
    assert env["BACKUP_INTERVAL_S"] == "86400" and env["BACKUP_KEEP"] == "7"
    assert backup["user"] == "999:999" and backup["memory"] > 0


def test_ops_refuses_an_unknown_stack_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from ops.__main__ import main

    assert main(["backups", "--stack", "staging"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown stack 'staging'") and err.count("\n") == 1


def test_package_index_reaches_the_build_and_only_when_set() -> None:
    rec = run_program("dev", _with("dev", pipIndexUrl="https://pypi.example.internal/simple",
                                   pipTrustedHost="pypi.example.internal"))
    args = rec.named("app-image").inputs["build"]["args"]
    assert args["PIP_INDEX_URL"] == "https://pypi.example.internal/simple"
    assert args["PIP_TRUSTED_HOST"] == "pypi.example.internal"
    assert "PIP_INDEX_URL" not in run_program("dev").named("app-image").inputs["build"]["args"]


@pytest.mark.parametrize("value", ["public,", ",public", "public,,analytics", "public analytics", "Analytics",
                                   "pg_catalog", "information_schema", "public,public", "public;drop"])
def test_app_schemas_are_judged_whole(value: str) -> None:
    with pytest.raises(ConfigError, match="appSchemas") as err:
        load_settings(_prod_raw(appSchemas=value), "prod")
    assert repr(value) in str(err.value) or value in str(err.value)


@pytest.mark.parametrize("value", ["", "public", "public,analytics", "analytics"])
def test_app_schemas_reach_the_job_and_every_restore(value: str) -> None:
    s = load_settings(_prod_raw(appSchemas=value), "prod")
    assert dict(s.provision.env)["APP_SCHEMAS"] == value == dict(s.backup.env)["APP_SCHEMAS"]


@pytest.mark.parametrize("value", ["postgres", "stock_app", "stock_app_b", "stock_app_rw"])
def test_the_backup_role_is_none_of_the_others(value: str) -> None:
    with pytest.raises(ConfigError, match="dbBackupUser"):
        load_settings(_prod_raw(dbBackupUser=value), "prod")
