"""The rules, over a neutral view of a container so that the Pulumi resources and the exported compose
file are held to the same checks. Each rule returns violation messages; an empty list passes.

A container may carry a reviewed exception: the label `stock-analyzer.policy-exception.<policy>` with
the reason as its value. Exceptions are code: they go through review like any change (docs/reviewing.md).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

EXCEPTION_LABEL = "stock-analyzer.policy-exception."
# A name part (split at anything but letters and digits) that is one of these looks secret: DB_PASS, API_KEY.
SECRET_WORDS = {"PASS", "PASSWORD", "PASSWD", "PWD", "PW", "SECRET", "TOKEN", "KEY", "APIKEY", "CREDENTIAL",
                "CREDENTIALS", "CREDS", "PASSPHRASE", "PRIVATEKEY"}
# A part that contains one of these looks secret too: PGPASSWORD, MYSQL_ROOTPASSWORD, GITHUBTOKEN, DBPASS.
SECRET_STEMS = ("PASSWORD", "PASSWD", "PASSPHRASE", "SECRET", "TOKEN", "APIKEY", "CREDENTIAL", "PRIVATEKEY")
SECRET_SUFFIXES = ("PASS", "PWD")
# A password inside a URL (user:password@ after the scheme: a DSN, a proxy, a webhook), whatever the variable is named.
_URL_CREDENTIALS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s:]*:[^/?#@\s]+@")
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
        """Exactly the named check is off, and only with a reason; no exception covers another check."""
        return bool(self.labels.get(EXCEPTION_LABEL + policy, "").strip())

    @property
    def exceptions(self) -> dict[str, str]:
        return {k[len(EXCEPTION_LABEL):]: v for k, v in self.labels.items() if k.startswith(EXCEPTION_LABEL)}


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


# Swarm restart conditions, in the terms of the container rules ("none" stays what it is: no restart).
_SWARM_RESTART = {"any": "always", "on-failure": "on-failure", "none": "no"}


def from_pulumi_service(name: str, props: Mapping[str, Any]) -> ContainerView:
    """From `docker:index/service:Service` inputs (the swarm target): its task's container."""
    task = props.get("taskSpec") or {}
    cs = task.get("containerSpec") or {}
    hc = cs.get("healthcheck") or {}
    limits = (task.get("resources") or {}).get("limits") or {}
    memory = _int(limits.get("memoryBytes"))
    ports = (props.get("endpointSpec") or {}).get("ports") or []
    return ContainerView(
        name=name,
        image=str(cs.get("image", "")),
        env={str(k): str(v) for k, v in (cs.get("env") or {}).items()},
        labels={lab["label"]: lab["value"] for lab in cs.get("labels") or []},
        restart=_SWARM_RESTART.get(str((task.get("restartPolicy") or {}).get("condition", "any"))),
        healthcheck=bool(hc.get("tests")) and hc.get("tests") != ["NONE"],
        # Swarm publishes on every address of every node.
        ports=[Port("0.0.0.0", _int(p.get("publishedPort")), int(p["targetPort"])) for p in ports],
        memory_mb=memory // 1024**2 if memory else None,
        user=cs.get("user"),
        cap_drop=list(cs.get("capDrops") or []),
        security_opts=[],
        read_only=bool(cs.get("readOnly")),
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
    """From a compose service, or a stack file's (restart and memory under `deploy`, long-form ports)."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(_split_env(str(e)) for e in env)
    hc = svc.get("healthcheck") or {}
    deploy = svc.get("deploy") or {}
    restart = svc.get("restart") or _SWARM_RESTART.get(str((deploy.get("restart_policy") or {}).get("condition")))
    memory = svc.get("mem_limit") or ((deploy.get("resources") or {}).get("limits") or {}).get("memory")
    return ContainerView(
        name=name,
        image=str(svc.get("image", "")),
        env={str(k): str(v) for k, v in env.items()},
        labels=dict(svc.get("labels") or {}),
        restart=str(restart).split(":")[0] if restart else None,
        healthcheck=bool(hc.get("test")) and not hc.get("disable"),
        ports=[Port("0.0.0.0", _int(p.get("published")), int(p["target"])) if isinstance(p, dict)
               else _parse_port(str(p)) for p in svc.get("ports") or []],
        memory_mb=_mem_mb(memory),
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
    if not c.healthcheck and not c.excepted("container-healthcheck-and-restart"):  # the restart is still checked
        out.append(f"{c.name}: no healthcheck; add one so `wait` and depends_on mean healthy, not started")
    if c.restart not in SERVICE_RESTARTS:
        out.append(f"{c.name}: restart policy {c.restart!r}; use one of {', '.join(sorted(SERVICE_RESTARTS))}")
    return out


def looks_secret(name: str) -> bool:
    parts = [p for p in re.split(r"[^A-Z0-9]+", name.upper()) if p]
    return any(p in SECRET_WORDS or any(stem in p for stem in SECRET_STEMS)
               or (p.endswith(SECRET_SUFFIXES) and not p.endswith("BYPASS")) for p in parts)


def no_plaintext_secret_env(c: ContainerView) -> list[str]:
    out = []
    for name, value in sorted(c.env.items()):
        if _URL_CREDENTIALS.search(value):
            out.append(f"{c.name}: env {name} holds a URL with a password in it (user:password@host); "
                       "keep the password out of the URL and deliver it as a file")
            continue
        if not looks_secret(name):
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


def prod_memory_limit(c: ContainerView) -> list[str]:
    if c.environment != "prod" or c.excepted("prod-memory-limit") or c.memory_mb:
        return []
    return [f"{c.name}: no memory limit in prod"]


def prod_non_root(c: ContainerView) -> list[str]:
    if c.environment != "prod" or c.excepted("prod-non-root") or _non_root(c.user):
        return []
    return [f"{c.name}: runs as {c.user or 'the image default (root)'} in prod; set a non-root user"]


# CIS Docker Benchmark 5.3, 5.25 and 5.12: one check each, so that an exception turns off exactly one.
def drop_all_capabilities(c: ContainerView) -> list[str]:
    if c.excepted("drop-all-capabilities") or "ALL" in [d.upper() for d in c.cap_drop]:
        return []
    return [f"{c.name}: capabilities not dropped (cap_drop ALL, then add back only what is needed)"]


def no_new_privileges(c: ContainerView) -> list[str]:
    if c.excepted("no-new-privileges") or any(
            o.replace("=", ":") in ("no-new-privileges", "no-new-privileges:true") for o in c.security_opts):
        return []
    return [f"{c.name}: no-new-privileges not set"]


def read_only_root_filesystem(c: ContainerView) -> list[str]:
    if c.excepted("read-only-root-filesystem") or c.read_only:
        return []
    return [f"{c.name}: root filesystem is writable; set read_only with tmpfs where it writes"]


def known_policy_exceptions(c: ContainerView) -> list[str]:
    """An exception must name an existing check and give a reason: a typo must not pass silently."""
    out = []
    for policy, reason in sorted(c.exceptions.items()):
        if policy not in CONTAINER_RULES or policy == "known-policy-exceptions":
            out.append(f"{c.name}: policy exception for unknown check {policy!r}; "
                       f"allowed: {', '.join(n for n in CONTAINER_RULES if n != 'known-policy-exceptions')}")
        elif not reason.strip():
            out.append(f"{c.name}: policy exception for {policy!r} gives no reason")
    return out


CONTAINER_RULES: dict[str, tuple[str, Callable[[ContainerView], list[str]]]] = {
    "container-healthcheck-and-restart": ("Containers have a healthcheck and a restart policy.",
                                          healthcheck_and_restart),
    "no-plaintext-secret-env": ("No container env carries a plaintext value whose name looks like a password, "
                                "secret, token or key, nor a URL with a password in it.", no_plaintext_secret_env),
    "no-database-port-on-all-interfaces": ("No database port is bound to 0.0.0.0.",
                                           no_database_port_on_all_interfaces),
    "pinned-images": ("Images are pinned: a version tag (not latest) or a digest.", pinned_container_image),
    "prod-memory-limit": ("Prod containers have a memory limit.", prod_memory_limit),
    "prod-non-root": ("Prod containers run as a non-root user.", prod_non_root),
    "drop-all-capabilities": ("Containers drop all capabilities and add back only what they need.",
                              drop_all_capabilities),
    "no-new-privileges": ("Containers set no-new-privileges.", no_new_privileges),
    "read-only-root-filesystem": ("Containers have a read-only root filesystem.", read_only_root_filesystem),
    "known-policy-exceptions": ("Policy exceptions name an existing check and give a reason.",
                                known_policy_exceptions),
}


def check_compose(doc: Mapping[str, Any]) -> list[str]:
    """Every container rule over every service of a compose document."""
    return [msg for name, svc in (doc.get("services") or {}).items()
            for _, rule in CONTAINER_RULES.values() for msg in rule(from_compose(name, svc))]
