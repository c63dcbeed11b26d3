"""The rules, over a neutral view of a container so that the Pulumi resources and the exported compose
file are held to the same checks. Each rule returns violation messages; an empty list passes.

A container may carry a reviewed exception: the label `stock-analyzer.policy-exception.<policy>` with
the reason as its value. Exceptions are code: they go through review like any change (README).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

EXCEPTION_LABEL = "stock-analyzer.policy-exception."
SECRET_WORDS = {"PASSWORD", "PASSWD", "PWD", "SECRET", "TOKEN", "KEY", "APIKEY", "CREDENTIAL", "CREDENTIALS"}
SERVICE_RESTARTS = {"always", "unless-stopped", "on-failure"}
DB_PORTS = {5432}
_PINNED = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._/-][a-z0-9]+)*"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
_IMAGE_ID = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass
class Port:
    ip: str
    external: int | None
    internal: int


@dataclass
class ContainerView:
    name: str
    image: str
    env: dict[str, str]
    labels: dict[str, str]
    restart: str | None
    healthcheck: bool
    ports: list[Port] = field(default_factory=list)
    memory_mb: int | None = None
    user: str | None = None
    cap_drop: list[str] = field(default_factory=list)
    security_opts: list[str] = field(default_factory=list)
    read_only: bool = False

    @property
    def environment(self) -> str:
        return self.labels.get("stock-analyzer.environment", "")

    @property
    def is_job(self) -> bool:
        return self.labels.get("stock-analyzer.role") == "job"

    def excepted(self, policy: str) -> bool:
        return bool(self.labels.get(EXCEPTION_LABEL + policy, "").strip())


# -- building views ----------------------------------------------------------------------------------

def _split_env(entry: str) -> tuple[str, str]:
    name, _, value = entry.partition("=")
    return name, value


def _int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def from_pulumi(name: str, props: Mapping[str, Any]) -> ContainerView:
    """From `docker:index/container:Container` inputs (camelCase, as the engine passes them)."""
    labels = {lab["label"]: lab["value"] for lab in props.get("labels") or []}
    hc = props.get("healthcheck") or {}
    return ContainerView(
        name=name,
        image=str(props.get("image", "")),
        env=dict(_split_env(str(e)) for e in props.get("envs") or []),
        labels=labels,
        restart=props.get("restart"),
        healthcheck=bool(hc.get("tests")) and hc.get("tests") != ["NONE"],
        ports=[Port(p.get("ip", "0.0.0.0"), _int(p.get("external")), int(p["internal"]))
               for p in props.get("ports") or []],
        memory_mb=_int(props.get("memory")),
        user=props.get("user"),
        cap_drop=list((props.get("capabilities") or {}).get("drops") or []),
        security_opts=list(props.get("securityOpts") or []),
        read_only=bool(props.get("readOnly")),
    )


def _parse_port(spec: str) -> Port:
    parts = spec.split(":")
    internal = int(parts[-1].split("/")[0])
    if len(parts) == 3:
        return Port(parts[0], int(parts[1]), internal)
    if len(parts) == 2:
        return Port("0.0.0.0", int(parts[0]), internal)
    return Port("0.0.0.0", None, internal)


def _mem_mb(value: Any) -> int | None:
    if value in (None, ""):
        return None
    m = re.fullmatch(r"(\d+)([bkmg]?)", str(value).lower())
    if not m:
        return None
    return int(m[1]) * {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m[2]] // 1024**2


def from_compose(name: str, svc: Mapping[str, Any]) -> ContainerView:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(_split_env(str(e)) for e in env)
    hc = svc.get("healthcheck") or {}
    restart = svc.get("restart")
    return ContainerView(
        name=name,
        image=str(svc.get("image", "")),
        env={str(k): str(v) for k, v in env.items()},
        labels=dict(svc.get("labels") or {}),
        restart=str(restart).split(":")[0] if restart else None,
        healthcheck=bool(hc.get("test")) and not hc.get("disable"),
        ports=[_parse_port(str(p)) for p in svc.get("ports") or []],
        memory_mb=_mem_mb(svc.get("mem_limit")),
        user=svc.get("user"),
        cap_drop=list(svc.get("cap_drop") or []),
        security_opts=list(svc.get("security_opt") or []),
        read_only=bool(svc.get("read_only")),
    )


# -- rules -------------------------------------------------------------------------------------------

def healthcheck_and_restart(c: ContainerView) -> list[str]:
    if c.is_job:
        return [] if c.restart == "no" else [f"{c.name}: a one-shot job must not restart (restart: no)"]
    out = []
    if not c.healthcheck:
        out.append(f"{c.name}: no healthcheck; add one so `wait` and depends_on mean healthy, not started")
    if c.restart not in SERVICE_RESTARTS:
        out.append(f"{c.name}: restart policy {c.restart!r}; use one of {', '.join(sorted(SERVICE_RESTARTS))}")
    return out


def _looks_secret(name: str) -> bool:
    return bool(set(re.split(r"[^A-Z0-9]+", name.upper())) & SECRET_WORDS)


def no_plaintext_secret_env(c: ContainerView) -> list[str]:
    out = []
    for name, value in sorted(c.env.items()):
        if not _looks_secret(name):
            continue
        if name.upper().endswith("_FILE") and value.startswith("/"):
            continue  # a path to a secret file, not the secret
        out.append(f"{c.name}: env {name} looks like a secret carried in plain text; "
                   f"deliver it as a file and pass {name}_FILE=/run/secrets/...")
    return out


def _all_interfaces(ip: str) -> bool:
    if ip in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(ip).is_unspecified
    except ValueError:
        return False


def no_database_port_on_all_interfaces(c: ContainerView) -> list[str]:
    is_db = "postgres" in c.image.split("@")[0].rsplit("/", 1)[-1] or any(p.internal in DB_PORTS for p in c.ports)
    if not is_db:
        return []
    return [f"{c.name}: database port {p.internal} published on all interfaces ({p.ip or '*'}:{p.external}); "
            f"bind it to 127.0.0.1 or do not publish it" for p in c.ports if _all_interfaces(p.ip)]


def pinned_image(name: str, image: str) -> list[str]:
    if _IMAGE_ID.match(image):
        return []  # an image ID: pinned by content
    m = _PINNED.match(image)
    if not m or not (m["tag"] or m["digest"]):
        return [f"{name}: image {image!r} is not pinned; give a version tag or a digest"]
    if m["tag"] == "latest" and not m["digest"]:
        return [f"{name}: image {image!r} uses 'latest'; give a version tag or a digest"]
    return []


def pinned_container_image(c: ContainerView) -> list[str]:
    return pinned_image(c.name, c.image)


def _non_root(user: str | None) -> bool:
    if not user:
        return False
    uid = user.split(":")[0]
    return uid not in ("", "0", "root")


def prod_limits_and_non_root(c: ContainerView) -> list[str]:
    if c.environment != "prod" or c.excepted("prod-limits-and-non-root"):
        return []
    out = []
    if not c.memory_mb:
        out.append(f"{c.name}: no memory limit in prod")
    if not _non_root(c.user):
        out.append(f"{c.name}: runs as {c.user or 'the image default (root)'} in prod; set a non-root user")
    return out


def hardening(c: ContainerView) -> list[str]:
    """CIS Docker Benchmark 5.3, 5.12, 5.25: drop all capabilities, read-only root, no-new-privileges."""
    if c.excepted("container-hardening"):
        return []
    out = []
    if "ALL" not in [d.upper() for d in c.cap_drop]:
        out.append(f"{c.name}: capabilities not dropped (cap_drop ALL, then add back only what is needed)")
    if not any(o.replace("=", ":").startswith("no-new-privileges") and not o.endswith("false")
               for o in c.security_opts):
        out.append(f"{c.name}: no-new-privileges not set")
    if not c.read_only:
        out.append(f"{c.name}: root filesystem is writable; set read_only with tmpfs where it writes")
    return out


CONTAINER_RULES: dict[str, tuple[str, Callable[[ContainerView], list[str]]]] = {
    "container-healthcheck-and-restart": ("Containers have a healthcheck and a restart policy.",
                                          healthcheck_and_restart),
    "no-plaintext-secret-env": ("No container env carries a plaintext value whose name looks like a password, "
                                "secret, token or key.", no_plaintext_secret_env),
    "no-database-port-on-all-interfaces": ("No database port is bound to 0.0.0.0.",
                                           no_database_port_on_all_interfaces),
    "pinned-images": ("Images are pinned: a version tag (not latest) or a digest.", pinned_container_image),
    "prod-limits-and-non-root": ("Prod containers have a memory limit and a non-root user.",
                                 prod_limits_and_non_root),
    "container-hardening": ("Containers drop all capabilities, set no-new-privileges and a read-only root.",
                            hardening),
}


def check_compose(doc: Mapping[str, Any]) -> list[str]:
    """Every container rule over every service of a compose document."""
    return [msg for name, svc in (doc.get("services") or {}).items()
            for _, rule in CONTAINER_RULES.values() for msg in rule(from_compose(name, svc))]
