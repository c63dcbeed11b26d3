"""What a swarm stack runs now, read from the manager before `pulumi up` plans: the Pulumi program picks the
app's login role from it (model/swarm.py deployed_app_role), as the stack-file path does from its files."""

from __future__ import annotations

import os
from typing import Any

import docker
import docker.errors
import requests

from model.swarm import APP_ROLE_LABEL, DeployedApp


def engine_client(host: str | None) -> docker.DockerClient:
    """The engine the provider talks to: `docker:host` if set, else DOCKER_HOST or the local socket."""
    if host:
        return docker.DockerClient(base_url=host, use_ssh_client=host.startswith("ssh://"), timeout=30)
    return docker.from_env(timeout=30)


def _secret_name(spec: dict[str, Any], target: str) -> str | None:
    for ref in spec.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Secrets") or []:
        if ref.get("File", {}).get("Name") == target:
            return str(ref["SecretName"])
    return None


def deployed_app(host: str | None, service: str, target: str) -> DeployedApp | None:
    """The app secret mounted at `target` in `service`'s spec and the service's role label; None when the
    service (or its secret) does not exist yet. Raises RuntimeError with one line if the engine cannot say."""
    where = host or os.environ.get("DOCKER_HOST") or "the local socket"
    try:
        client = engine_client(host)
        found = [s for s in client.services.list(filters={"name": service}) if s.name == service]
    except (docker.errors.DockerException, requests.RequestException) as err:
        raise RuntimeError(f"cannot read service {service} from the Docker engine at {where}: "
                           f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if not found:
        return None
    spec = found[0].attrs.get("Spec", {})
    name = _secret_name(spec, target)
    if name is None:
        return None
    return DeployedApp(secret_name=name, role=(spec.get("Labels") or {}).get(APP_ROLE_LABEL))
