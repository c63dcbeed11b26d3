"""Compose export: the same model as the Pulumi program, for users without the Pulumi CLI.

    python -m exporters.compose --stack dev --out DIR

writes DIR/compose.yaml and, when missing, DIR/secrets/<name> (generated, never overwritten, never
printed). The compose file holds no secret value: services read `*_FILE` paths of compose secrets.
"""

from __future__ import annotations

import argparse
import os
import secrets
import stat
import string
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from exporters import swarm_stack
from model import swarm as swarm_model
from model.settings import (
    PROJECT,
    SECRET_APP_DB,
    SECRET_SWARM_NAME_KEY,
    SECRETS,
    SECURITY_OPTS,
    USER_SECRETS,
    ConfigError,
    ContainerSpec,
    SecretSpec,
    StackSettings,
    password_problem,
    spec_labels,
)
from model.stack_yaml import PROJECT_DIR, settings_from_file

APP_CONTEXT = PROJECT_DIR / "app"
SECRETS_SUBDIR = "secrets"  # pragma: allowlist secret (a directory name)
CONFIGS_SUBDIR = "provision"
_ALPHABET = string.ascii_letters + string.digits


def _duration(seconds: int) -> str:
    return f"{seconds}s"


def _config_name(path: str) -> str:
    return path.strip("/").replace("/", "_").replace(".", "_")


def _service(spec: ContainerSpec, s: StackSettings, image: str, build: dict[str, Any] | None,
             depends_on: dict[str, dict[str, str]]) -> dict[str, Any]:
    svc: dict[str, Any] = {"image": image}
    if build:
        svc["build"] = build
    svc["container_name"] = spec.container_name
    svc.update(swarm_stack.process_fields(spec.entrypoint, spec.command, spec.user, spec.env))
    if spec.secrets:
        svc["secrets"] = [m.secret.name for m in spec.secrets]
    if spec.uploads:
        svc["configs"] = [{"source": _config_name(path), "target": path} for path, _ in spec.uploads]
    if spec.mounts:
        svc["volumes"] = [{"type": "volume", "source": m.volume, "target": m.target, **({"read_only": True}
                           if m.read_only else {})} for m in spec.mounts]
    if spec.ports:
        svc["ports"] = [f"{p.host_ip}:{p.host_port}:{p.container_port}" for p in spec.ports]
    svc["networks"] = {net: {"aliases": list(spec.aliases)} if spec.aliases else {} for net in spec.networks}
    if spec.healthcheck:
        svc["healthcheck"] = swarm_stack.compose_healthcheck(spec.healthcheck)
    if depends_on:
        svc["depends_on"] = depends_on
    svc["restart"] = f"on-failure:{spec.max_retries}" if spec.max_retries else spec.restart
    svc["cap_drop"] = ["ALL"]
    if spec.cap_add:
        svc["cap_add"] = list(spec.cap_add)
    svc["security_opt"] = list(SECURITY_OPTS)
    svc["read_only"] = spec.read_only
    if spec.tmpfs:
        svc["tmpfs"] = [f"{path}:{opts}" for path, opts in spec.tmpfs]
    svc["pids_limit"] = spec.pids_limit
    if spec.stop_signal:
        svc["stop_signal"] = spec.stop_signal
    if spec.stop_grace_s:
        svc["stop_grace_period"] = _duration(spec.stop_grace_s)
    if spec.memory_mb:
        svc["mem_limit"] = f"{spec.memory_mb}m"
    svc["logging"] = {"driver": "json-file", "options": s.log_opts}
    svc["labels"] = spec_labels(spec, s)
    return svc


def compose_document(s: StackSettings, app_context: Path = APP_CONTEXT,
                     ca_bundle: Path | None = None) -> dict[str, Any]:
    """The compose model, derived from the same settings as the Pulumi resources."""
    healthy_db = {"postgres": {"condition": "service_healthy"}}
    build: dict[str, Any] = {"context": str(app_context), "args": dict(s.app_build_args)}
    if ca_bundle:
        build["secrets"] = ["ca"]
    postgres_image = s.pitr.image if s.pitr else s.postgres_image
    pitr_build = {"context": str(app_context.parent / "pitr"), "args": {"POSTGRES_IMAGE": s.postgres_image}}
    services: dict[str, Any] = {
        "postgres": _service(s.postgres, s, postgres_image, pitr_build if s.pitr else None, {}),
        # Started with the server: the job itself waits until the server accepts connections (the probe
        # of its healthcheck; provision/provision.sh), which spares compose's half-second health polling.
        "db-provision": _service(s.provision, s, s.postgres_image, None, {
            "postgres": {"condition": "service_started"},
            # Commits wait for the synchronous receiver: it runs before anything writes.
            **({s.wal_receiver.service: {"condition": "service_started"}} if s.wal_receiver else {})}),
    }
    if s.wal_receiver:
        services[s.wal_receiver.service] = {"image": postgres_image, "pull_policy": "never", **_service(
            s.wal_receiver, s, postgres_image, None, {"postgres": {"condition": "service_started"}})}
    # One build for the three services: only the first carries `build`; the others run the image it tags.
    # Three builds of one tag leave containers labelled with images the tag no longer names, and the next
    # `up -d` (a rotation, say) would then recreate them all.
    for i, spec in enumerate(s.apps):
        svc = _service(spec, s, s.app_image, build if i == 0 else None, {
            **healthy_db, "db-provision": {"condition": "service_completed_successfully"}})
        if i > 0:
            svc = {"image": svc.pop("image"), "pull_policy": "never", **svc}
        services[spec.service] = svc
    services[s.backup.service] = _service(s.backup, s, s.postgres_image, None, {
        **healthy_db, "db-provision": {"condition": "service_completed_successfully"}})
    if s.pitr_runner:
        services[s.pitr_runner.service] = {"image": postgres_image, "pull_policy": "never", **_service(
            s.pitr_runner, s, postgres_image, None, {
                **healthy_db, "db-provision": {"condition": "service_completed_successfully"}})}
    used = sorted({m.secret.name for c in s.containers for m in c.secrets})
    build_secrets = {"ca": {"file": str(ca_bundle.absolute())}} if ca_bundle else {}
    return {
        "name": s.prefix,
        "services": services,
        "networks": {logical: {"name": name, "driver": "bridge"} for logical, name in s.networks.items()},
        "volumes": {logical: {"name": name, **({"driver_opts": s.volume_driver_opts[logical]}
                                                if logical in s.volume_driver_opts else {})}
                    for logical, name in s.volumes.items()},
        "secrets": {**{name: {"file": f"./{SECRETS_SUBDIR}/{name}"} for name in used}, **build_secrets},
        # Files next to compose.yaml, bind-mounted: inline `content:` would be copied into the container,
        # which the engine refuses for a read-only root filesystem.
        "configs": {_config_name(path): {"file": f"./{CONFIGS_SUBDIR}/{Path(path).name}"}
                    for c in s.containers for path, _ in c.uploads},
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Spell every mapping out: anchors and aliases make a generated file harder to read and diff."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def compose_text(s: StackSettings, app_context: Path = APP_CONTEXT, ca_bundle: Path | None = None) -> str:
    header = (f"# Generated from Pulumi.{s.stack}.yaml by `python -m exporters.compose --stack {s.stack}`.\n"
              "# Do not edit: change the stack config and export again. Holds no secret values.\n")
    return header + yaml.dump(compose_document(s, app_context, ca_bundle), Dumper=_NoAliasDumper, sort_keys=False,
                              default_flow_style=False, width=120)


class ExportError(Exception):
    pass


def _check_private(path: Path, what: str) -> None:
    """An existing directory (or file) we write into or read secrets from must be ours and not writable by
    others: otherwise another local user could have planted the passwords we would keep, or swap what we write."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise ExportError(f"{path} is a symbolic link; allowed: a real {what} (remove the link)")
    if st.st_uid != os.geteuid():
        raise ExportError(f"{path} is owned by uid {st.st_uid}, not by the user running the export "
                          f"(uid {os.geteuid()}); allowed: a {what} you own")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise ExportError(f"{path} has mode {mode:04o}, writable by group or others; allowed: no group or other "
                          f"write (fix with chmod go-w {path})")


def _check_out_dir(out: Path) -> None:
    for path in (out, out / CONFIGS_SUBDIR):
        if path.is_symlink() or path.exists():
            if not path.is_symlink() and not path.is_dir():
                raise ExportError(f"{path} exists and is not a directory")
            _check_private(path, "directory")
    if (out / "compose.yaml").is_symlink():
        raise ExportError(f"{out / 'compose.yaml'} is a symbolic link; allowed: a regular file (remove the link)")


def _check_secret_dir(directory: Path) -> None:
    if not (directory.is_symlink() or directory.exists()):
        return
    if not directory.is_symlink() and not directory.is_dir():
        raise ExportError(f"{directory} exists and is not a directory")
    _check_private(directory, "directory")
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o077:
        raise ExportError(f"{directory} has mode {mode:04o}; allowed: 0700 (no group or other access), "
                          f"fix with chmod 700 {directory}")
    for entry in sorted(directory.iterdir()):
        if entry.is_symlink():
            raise ExportError(f"{entry} is a symbolic link; allowed: regular files only in {directory}")
    for spec in SECRETS:
        f = directory / spec.name
        if not f.exists():
            continue
        if not f.is_file():
            raise ExportError(f"{f} exists and is not a regular file")
        _check_private(f, "file")
        try:
            value = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ExportError(f"{f} is not UTF-8 text; delete it to generate a new one") from None
        problem = password_problem(value, spec.length)
        if problem:
            raise ExportError(f"{f} is unusable: {problem} (a generated one has {spec.length}); delete it to "
                              "generate a new one, or write a longer one without a newline (printf '%s')")


def _check_writable(out: Path) -> None:
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write to {out}: {probe} is not a writable directory")
    if (out / "compose.yaml").exists() and not os.access(out / "compose.yaml", os.W_OK):
        raise ExportError(f"cannot write to {out / 'compose.yaml'}")


def generate_secret(spec: SecretSpec) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(spec.length))


def _write_atomic(path: Path, data: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export(stack: str, out: Path, project_dir: Path = PROJECT_DIR, ca_bundle: Path | None = None,
           target: str | None = None) -> list[str]:
    """Validate everything first, then write; returns the secret names that were generated."""
    settings = settings_from_file(stack, project_dir)
    if target is not None and target != settings.target:
        raise ExportError(f"--target {target}: stack {stack} has target {settings.target} "
                          f"({PROJECT}:target in Pulumi.{stack}.yaml); set it to {target} there")
    out = out.absolute()
    secret_dir = out / SECRETS_SUBDIR
    _check_writable(out)
    _check_out_dir(out)
    _check_secret_dir(secret_dir)
    if ca_bundle is not None and not ca_bundle.is_file():
        raise ExportError(f"--ca-bundle {ca_bundle}: not a file")
    swarm = settings.target == "swarm"
    text = "" if swarm else compose_text(settings, project_dir / "app", ca_bundle)
    # Explicit modes: with a umask of 002 (common for users) the defaults would be group-writable, which
    # the checks below refuse.
    out.mkdir(parents=True, exist_ok=True, mode=0o755)
    secret_dir.mkdir(mode=0o700, exist_ok=True)
    (out / CONFIGS_SUBDIR).mkdir(exist_ok=True, mode=0o755)
    # Again after creating: a directory that appeared between the checks and mkdir (someone else's) is refused.
    _check_out_dir(out)
    _check_secret_dir(secret_dir)
    os.chmod(secret_dir, 0o700)
    missing = [spec.name for spec in settings.supplied_secrets if not (secret_dir / spec.name).is_file()
               or not (secret_dir / spec.name).read_text().strip()]
    if missing and settings.pitr:
        raise ExportError(f"pitrOffhost is {settings.pitr.offhost_kind}: put the "
                          f"{' and the '.join(s.description for s in settings.supplied_secrets)} in {secret_dir}/"
                          f"{' and '.join(missing)} (mode 0444; the keys one line each, no newline) and export "
                          "again")
    created = []
    for spec in settings.generated_secrets:
        path = secret_dir / spec.name
        if not path.exists():
            # 0444 inside a 0700 directory: private on the host, yet readable by the non-root uid of each
            # service (compose ignores uid/gid/mode of file secrets outside swarm mode; it bind-mounts them).
            _write_atomic(path, generate_secret(spec), 0o444)
            created.append(spec.name)
    if swarm:
        # The swarm model's files are a superset of the containers' uploads: written there, once.
        text = _swarm_files(settings, out)
    else:
        config_dir = out / CONFIGS_SUBDIR
        for c in settings.containers:
            for target, content in c.uploads:
                _write_atomic(config_dir / Path(target).name, content, 0o644)
    _write_atomic(out / "compose.yaml", text, 0o644)
    return created


def _swarm_files(s: StackSettings, out: Path) -> str:
    """The app secret (role and password) and the swarm-only files next to the stack file; returns its text."""
    secret_dir = out / SECRETS_SUBDIR
    creds = secret_dir / swarm_model.APP_CREDENTIALS_SECRET
    password = (secret_dir / SECRET_APP_DB.name).read_text(encoding="utf-8")
    previous = None
    if creds.exists() or creds.is_symlink():
        _check_private(creds, "file")
        previous = creds.read_text(encoding="utf-8")
    role = swarm_model.next_app_role(s.db_app_user, password, previous)
    text = swarm_model.credentials_text(role, password)
    if text != previous:
        _write_atomic(creds, text, 0o400)
    model = swarm_model.swarm_model(s)
    for path, content in model.configs.values():
        sub = out / swarm_stack.config_dir(path)
        sub.mkdir(exist_ok=True, mode=0o755)
        _check_private(sub, "directory")
        _write_atomic(sub / Path(path).name, content, 0o644)
    secret_text = {name: (secret_dir / name).read_text(encoding="utf-8") for name in model.secrets}
    name_key = (secret_dir / SECRET_SWARM_NAME_KEY.name).read_text(encoding="utf-8")
    doc = swarm_stack.stack_document(s, secret_text, name_key, model)
    header = (f"# Generated from Pulumi.{s.stack}.yaml by `python -m exporters.compose --stack {s.stack} "
              "--target swarm`.\n# Deploy: docker stack deploy --detach=false --resolve-image never -c compose.yaml "
              f"{s.prefix} (docs/swarm.md). Holds no secret values.\n")
    return header + yaml.dump(doc, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False, width=120)


def rotate(out: Path, name: str) -> None:
    """Replace one generated secret in place; `docker compose up -d` then applies it.

    In place (same inode) because compose bind-mounts file secrets: running containers see the new
    content at once (the admin UI re-reads its password on every request), and the provisioning job,
    which `up -d` runs again, moves the database to it.
    """
    specs = {spec.name: spec for spec in USER_SECRETS}
    path = out.absolute() / SECRETS_SUBDIR / name
    if not (out / "compose.yaml").is_file() or not path.is_file() or path.is_symlink():
        raise ExportError(f"{path}: nothing to rotate; export first")
    _check_secret_dir(path.parent)
    mode = stat.S_IMODE(path.stat().st_mode)
    os.chmod(path, mode | stat.S_IWUSR)
    try:
        with open(path, "r+", encoding="utf-8") as f:
            f.write(generate_secret(specs[name]))
            f.truncate()
    finally:
        os.chmod(path, mode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporters.compose", description=__doc__.splitlines()[0])
    parser.add_argument("--stack", required=True, help="stack name: reads Pulumi.STACK.yaml")
    parser.add_argument("--out", required=True, type=Path, help="directory for compose.yaml and secrets/")
    parser.add_argument("--rotate", metavar="NAME",
                        help="replace this secret with a new value, then apply it with `docker compose up -d`; "
                             "NAME is one of: " + ", ".join(spec.name for spec in USER_SECRETS))
    parser.add_argument("--target", choices=("single", "swarm"), default=None,
                        help="single: compose.yaml for `docker compose`; swarm: a stack file for `docker stack deploy` "
                             "(the stack's own target key must agree; default: that key)")
    parser.add_argument("--ca-bundle", type=Path, default=None,
                        help="CA bundle given to the image build as BuildKit secret 'ca' (TLS-intercepting networks)")
    args = parser.parse_args(argv)
    try:
        if args.rotate:
            if args.rotate not in {spec.name for spec in USER_SECRETS}:
                raise ExportError(f"--rotate {args.rotate!r}: allowed: {', '.join(s.name for s in USER_SECRETS)}")
            if not (args.out / SECRETS_SUBDIR / args.rotate).is_file():
                raise ExportError(f"{args.out / SECRETS_SUBDIR / args.rotate}: nothing to rotate; export first")
        created = export(args.stack, args.out, ca_bundle=args.ca_bundle, target=args.target)
        if args.rotate:
            rotate(args.out, args.rotate)
    except (ConfigError, ExportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.rotate:
        if settings_from_file(args.stack).target == "swarm":
            print(f"rotated {args.rotate}; apply with: ./deploy.sh {args.stack} (docs/swarm.md: rotation)")
        else:
            print(f"rotated {args.rotate}; apply with: docker compose -f {args.out / 'compose.yaml'} up -d")
        return 0
    print(f"wrote {args.out / 'compose.yaml'}" + (f"; generated secrets: {', '.join(created)}" if created else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
