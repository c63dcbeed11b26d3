"""The compose export: derived from the same settings as the Pulumi program, no secret values in it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporters import compose
from model.settings import SECRETS, ConfigError, load_settings
from model.stack_yaml import settings_from_file
from tests.pulumi_mocks import ROOT, plain, run_program

STACKS = ("dev", "prod")


@pytest.mark.parametrize("stack", STACKS)
def test_stack_output_equals_cli_export(stack: str, tmp_path: Path) -> None:
    assert compose.main(["--stack", stack, "--out", str(tmp_path)]) == 0
    written = (tmp_path / "compose.yaml").read_text()
    assert plain(run_program(stack).outputs["compose"]) == written


@pytest.mark.parametrize("stack", STACKS)
def test_compose_matches_pulumi_resources(stack: str) -> None:
    rec = run_program(stack)
    doc = yaml.safe_load(plain(rec.outputs["compose"]))
    assert "version" not in doc
    assert doc["volumes"]["postgres_data"]["name"] == rec.named("database-data").inputs["name"]
    assert {k: v["name"] for k, v in doc["networks"].items()} == {
        n: rec.named(f"network-{n}").inputs["name"] for n in ("backend", "frontend")}
    for service, container in rec.containers().items():
        svc = doc["services"][service]
        i = container.inputs
        assert {doc["networks"][k]["name"]: v.get("aliases", []) for k, v in svc["networks"].items()} == {
            n["name"]: n.get("aliases", []) for n in i["networksAdvanced"]}
        assert svc["container_name"] == i["name"]
        assert [f"{k}={v}" for k, v in svc["environment"].items()] == i["envs"]
        ports = [f"{p['ip']}:{int(p['external'])}:{int(p['internal'])}" for p in i.get("ports", [])]
        assert svc.get("ports", []) == ports
        if "healthcheck" in i:
            assert svc["healthcheck"]["test"] == i["healthcheck"]["tests"]
            assert svc["healthcheck"]["interval"] == i["healthcheck"]["interval"]
            assert svc["healthcheck"]["start_interval"] == i["healthcheck"]["startInterval"]
        assert svc["restart"] == i["restart"]
        assert svc["logging"]["options"] == i["logOpts"]
        assert svc.get("user") == i.get("user")
        if "memory" in i:
            assert svc["mem_limit"] == f"{int(i['memory'])}m"
        secret_files = {u["file"] for u in plain(i.get("uploads", [])) if u["file"].startswith("/run/secrets/")}
        assert {f"/run/secrets/{n}" for n in svc.get("secrets", [])} == secret_files


def test_port_change_reaches_both(tmp_path: Path) -> None:
    base = {"environment": "dev", "apiHostPort": "15123"}
    doc = compose.compose_document(load_settings(base, "x"))
    assert doc["services"]["api"]["ports"] == ["127.0.0.1:15123:5000"]
    assert doc["services"]["api"]["healthcheck"]["test"][-1] == "http://127.0.0.1:5000/health"


def test_dependencies_and_database_port() -> None:
    dev = yaml.safe_load(compose.compose_text(settings_from_file("dev")))
    prod = yaml.safe_load(compose.compose_text(settings_from_file("prod")))
    for doc in (dev, prod):
        for svc in ("api", "frontend", "admin"):
            deps = doc["services"][svc]["depends_on"]
            assert deps["postgres"] == {"condition": "service_healthy"}
            assert deps["db-provision"] == {"condition": "service_completed_successfully"}
        # The job starts with the server and waits for it itself, at least as long as the server's own
        # healthcheck lets it start, with the healthcheck's probe (TCP, so never the init-time server).
        job = doc["services"]["db-provision"]
        assert job["depends_on"] == {"postgres": {"condition": "service_started"}}
        start_period = int(doc["services"]["postgres"]["healthcheck"]["start_period"].rstrip("s"))
        assert int(job["environment"]["PROVISION_WAIT_S"]) >= start_period
        assert doc["services"]["postgres"]["healthcheck"]["test"][1:4] == ["pg_isready", "-h", "127.0.0.1"]
        # One build (issue #8): three builds of one tag leave containers labelled with stale image IDs,
        # and the next `up -d` recreates them.
        built = [name for name, svc in doc["services"].items() if "build" in svc]
        assert built == ["api"]
        assert Path(doc["services"]["api"]["build"]["context"]).is_absolute()
        assert (Path(doc["services"]["api"]["build"]["context"]) / "Dockerfile").is_file()
        for svc in ("frontend", "admin"):
            assert doc["services"][svc]["image"] == doc["services"]["api"]["image"]
            assert doc["services"][svc]["pull_policy"] == "never"
        for name, secret in doc["secrets"].items():
            assert secret == {"file": f"./secrets/{name}"}
    assert all(p.startswith("127.0.0.1:") for p in dev["services"]["postgres"]["ports"])
    assert "ports" not in prod["services"]["postgres"]


def test_export_writes_private_secrets_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deploy"
    assert compose.main(["--stack", "dev", "--out", str(out)]) == 0
    secret_dir = out / "secrets"
    assert stat.S_IMODE(secret_dir.stat().st_mode) == 0o700
    values = {}
    for spec in SECRETS:
        f = secret_dir / spec.name
        values[spec.name] = f.read_text()
        assert len(values[spec.name]) >= 32 and values[spec.name].isalnum()
        # Readable by a non-root uid in the container: compose bind-mounts the file as it is.
        assert stat.S_IMODE(f.stat().st_mode) & 0o004
    text = (out / "compose.yaml").read_text()
    printed = capsys.readouterr()
    for v in values.values():
        assert v not in text and v not in printed.out and v not in printed.err
    assert len(set(values.values())) == len(values)
    assert compose.main(["--stack", "dev", "--out", str(out)]) == 0
    assert {s.name: (secret_dir / s.name).read_text() for s in SECRETS} == values


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["unknown-stack", "bad-secret-dir-mode", "secret-is-dir", "unwritable"])
def test_bad_input_one_line_error_files_untouched(case: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deploy"
    assert compose.main(["--stack", "dev", "--out", str(out)]) == 0
    (out / "compose.yaml").write_text("# user's file\n")
    stack = "dev"
    if case == "unknown-stack":
        stack = "staging"
    elif case == "bad-secret-dir-mode":
        os.chmod(out / "secrets", 0o755)  # noqa: S103 (the wrong mode is the point)
    elif case == "secret-is-dir":
        (out / "secrets" / "admin_password").unlink()
        (out / "secrets" / "admin_password").mkdir()
    elif case == "unwritable":
        shutil.rmtree(out)
        out.write_text("a file, not a directory")
    before = _snapshot(out) if out.is_dir() else None
    capsys.readouterr()
    assert compose.main(["--stack", stack, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    if before is not None:
        assert _snapshot(out) == before
    expected = {"unknown-stack": "unknown stack 'staging'", "bad-secret-dir-mode": "mode 0755",
                "secret-is-dir": "not a regular file", "unwritable": "not a writable directory"}[case]
    assert expected in err


@pytest.mark.docker
@pytest.mark.parametrize("stack", STACKS)
def test_docker_compose_accepts_export(stack: str, tmp_path: Path, docker_cli: str) -> None:
    assert compose.main(["--stack", stack, "--out", str(tmp_path)]) == 0
    result = subprocess.run([docker_cli, "compose", "-f", str(tmp_path / "compose.yaml"), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "variable is not set" not in result.stderr


def test_rotate_replaces_one_secret_in_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compose.main(["--stack", "dev", "--out", str(tmp_path)]) == 0
    secret_dir = tmp_path / "secrets"
    before = {s.name: ((secret_dir / s.name).read_text(), (secret_dir / s.name).stat()) for s in SECRETS}
    compose_before = (tmp_path / "compose.yaml").read_text()
    capsys.readouterr()
    assert compose.main(["--stack", "dev", "--out", str(tmp_path), "--rotate", "app_db_password"]) == 0
    printed = capsys.readouterr().out
    assert "docker compose" in printed and "up -d" in printed
    for spec in SECRETS:
        f = secret_dir / spec.name
        text, st = f.read_text(), f.stat()
        # Same inode: compose bind-mounts the file, so running containers see the new value.
        assert st.st_ino == before[spec.name][1].st_ino
        assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(before[spec.name][1].st_mode)
        if spec.name == "app_db_password":
            assert text != before[spec.name][0] and len(text) == spec.length and text.isalnum()
            assert text not in printed
        else:
            assert text == before[spec.name][0]
    assert (tmp_path / "compose.yaml").read_text() == compose_before


@pytest.mark.parametrize(("args", "expected"), [
    (["--rotate", "root_password"], "allowed: postgres_password, app_db_password, admin_password"),
    (["--rotate", "admin_password"], "nothing to rotate; export first"),
])
def test_rotate_bad_input(args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fresh"
    assert compose.main(["--stack", "dev", "--out", str(out), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err
    assert not out.exists()


def test_plaintext_password_in_stack_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "Pulumi.dev.yaml").write_text(yaml.safe_dump({"config": {
        "stock-analyzer:environment": "dev",
        "stock-analyzer:adminPassword": "plain-text-in-a-file",  # pragma: allowlist secret
    }}))
    with pytest.raises(ConfigError, match=r"adminPassword' holds a plaintext value"):
        settings_from_file("dev", project)
    (project / "Pulumi.dev.yaml").write_text(yaml.safe_dump({"config": {
        "stock-analyzer:environment": "dev",
        "stock-analyzer:adminPassword": {"secure": "v1:AAAA"},
    }}))
    assert settings_from_file("dev", project).environment == "dev"


# -- where the export writes and what it keeps ---------------------------------------------------------

OTHER_UID = 12345
PLANTED = "attacker-chosen-password-0123456789abcdef"  # pragma: allowlist secret (a test value, never deployed)


def _as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root (CI runs as root)")


def _export(out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expecting a refusal; return its one-line error."""
    capsys.readouterr()
    assert compose.main(["--stack", "dev", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _plant(out: Path, value: str = PLANTED, name: str = "admin_password") -> None:
    (out / "secrets").mkdir(parents=True, mode=0o700)
    (out / "secrets" / name).write_text(value)


@pytest.mark.parametrize("case", ["out-owned-by-other", "out-world-writable", "out-group-writable",
                                  "secrets-owned-by-other", "secret-file-owned-by-other", "out-is-symlink",
                                  "provision-owned-by-other"])
def test_export_refuses_paths_others_control(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deploy"
    out.mkdir()
    _plant(out)
    if case == "out-owned-by-other":
        _as_root()
        os.chown(out, OTHER_UID, OTHER_UID)
        os.chmod(out, 0o777)  # noqa: S103 (the attack being refused)
    elif case == "out-world-writable":
        os.chmod(out, 0o757)  # noqa: S103
    elif case == "out-group-writable":
        os.chmod(out, 0o775)  # noqa: S103
    elif case == "secrets-owned-by-other":
        _as_root()
        os.chown(out / "secrets", OTHER_UID, OTHER_UID)
    elif case == "secret-file-owned-by-other":
        _as_root()
        os.chown(out / "secrets" / "admin_password", OTHER_UID, OTHER_UID)
    elif case == "provision-owned-by-other":
        _as_root()
        (out / "provision").mkdir()
        os.chown(out / "provision", OTHER_UID, OTHER_UID)
    elif case == "out-is-symlink":
        real = tmp_path / "elsewhere"
        out.rename(real)
        out.symlink_to(real)
    before = _snapshot(out)
    err = _export(out, capsys)
    assert _snapshot(out) == before and not (out / "compose.yaml").exists()
    expected = {"out-world-writable": "writable by group or others",
                "out-group-writable": "writable by group or others",
                "out-is-symlink": "symbolic link"}.get(case, f"owned by uid {OTHER_UID}")
    assert expected in err
    assert PLANTED not in err


@pytest.mark.parametrize(("content", "reason"), [
    ("\n", "empty"),
    ("", "empty"),
    (" " * 40, "empty or only whitespace"),
    ("short-but-real", "14 characters; at least 32"),
    (PLANTED + "\n", "control"),
    (PLANTED[:20] + "\x00" + PLANTED[20:], "control"),
])
def test_export_refuses_unusable_existing_secrets(content: str, reason: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deploy"
    out.mkdir()
    _plant(out, content)
    before = _snapshot(out)
    err = _export(out, capsys)
    assert reason in err and "admin_password" in err
    assert _snapshot(out) == before and not (out / "compose.yaml").exists()


def test_export_refuses_any_symlink_in_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deploy"
    out.mkdir()
    _plant(out)
    (out / "secrets" / "notes").symlink_to("/etc/hostname")
    assert "symbolic link" in _export(out, capsys)
    (out / "secrets" / "notes").unlink()
    (out / "secrets" / "app_db_password").symlink_to(out / "secrets" / "admin_password")
    assert "symbolic link" in _export(out, capsys)
    assert not (out / "compose.yaml").exists()


def test_export_keeps_a_usable_secret_the_user_placed(tmp_path: Path) -> None:
    out = tmp_path / "deploy"
    out.mkdir()
    _plant(out)
    assert compose.main(["--stack", "dev", "--out", str(out)]) == 0
    assert (out / "secrets" / "admin_password").read_text() == PLANTED


def test_export_tools_do_not_need_pulumi() -> None:
    """The model and the non-Pulumi tools run where the Pulumi SDK is not installed."""
    code = ("import sys, exporters.compose, model.stack_yaml, model.settings, policy.rules; "
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0].startswith('pulumi')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"


def test_export_works_under_a_group_writable_umask(tmp_path: Path) -> None:
    """Many users have umask 002: what the export creates itself must still pass its own checks."""
    old = os.umask(0o002)
    try:
        assert compose.main(["--stack", "dev", "--out", str(tmp_path / "new" / "deploy")]) == 0
        assert compose.main(["--stack", "dev", "--out", str(tmp_path / "new" / "deploy")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new" / "deploy").stat().st_mode) & 0o022 == 0
