"""Translate a `ContainerSpec` into `docker.Container` arguments: the one mapping from settings to the
provider, shared by every component that runs a container."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pulumi
import pulumi_docker as docker

from model.settings import SECURITY_OPTS, ContainerSpec, StackSettings, spec_labels

UPLOAD_EXCEPTION = ("the docker provider uploads secret files through the root filesystem, which the engine "
                    "refuses on a read-only root; capabilities stay dropped and no-new-privileges set (both checked)")


# How long `pulumi up` waits for a container to report healthy before failing the update.
WAIT_TIMEOUT_S = 120


def _seconds(n: int) -> str:
    return f"{n}s"


def secret_uploads(
    spec: ContainerSpec, passwords: Mapping[str, pulumi.Output[str]]
) -> list[docker.ContainerUploadArgs]:
    """Secrets as files owned by the process that reads them, never as env vars.

    A secret in `envs` would mask the whole env list in every preview diff and show in `docker inspect`.
    """
    return [
        docker.ContainerUploadArgs(
            file=m.secret.path,
            content=pulumi.Output.secret(passwords[m.secret.name]),
            owner=str(m.owner_uid),
            group=str(m.owner_uid),
            permissions="0400",
        )
        for m in spec.secrets
    ]


def container_args(
    spec: ContainerSpec,
    settings: StackSettings,
    *,
    image: pulumi.Input[str],
    network_names: Mapping[str, pulumi.Input[str]],
    passwords: Mapping[str, pulumi.Output[str]],
    volume_names: Mapping[str, pulumi.Input[str]] | None = None,
    labels: Mapping[str, pulumi.Input[str]] | None = None,
) -> docker.ContainerArgs:
    hc = spec.healthcheck
    # The provider uploads files by extracting a tar at "/", which the engine refuses on a read-only
    # root filesystem: a container that receives uploads keeps a writable root (a reviewed exception,
    # labelled). The compose export bind-mounts the same files and stays read-only.
    uploads = bool(spec.secrets or spec.uploads)
    read_only = spec.read_only and not uploads
    exceptions = {"stock-analyzer.policy-exception.read-only-root-filesystem": UPLOAD_EXCEPTION} if uploads else {}
    all_labels: dict[str, pulumi.Input[str]] = {**spec_labels(spec, settings), **exceptions, **(labels or {})}
    one_shot = spec.role == "job"
    return docker.ContainerArgs(
        name=spec.container_name,
        image=image,
        entrypoints=list(spec.entrypoint) if spec.entrypoint is not None else None,
        command=list(spec.command) if spec.command else None,
        envs=[f"{k}={v}" for k, v in spec.env],
        user=spec.user,
        uploads=[
            *secret_uploads(spec, passwords),
            *(docker.ContainerUploadArgs(file=path, content=content, permissions="0444")
              for path, content in spec.uploads),
        ],
        ports=[
            docker.ContainerPortArgs(internal=p.container_port, external=p.host_port, ip=p.host_ip, protocol="tcp")
            for p in spec.ports
        ],
        networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=network_names[n], aliases=list(spec.aliases))
                           for n in spec.networks],
        volumes=[
            *(docker.ContainerVolumeArgs(volume_name=(volume_names or {})[m.volume], container_path=m.target,
                                         read_only=m.read_only or None)
              for m in spec.mounts),
        ] or None,
        healthcheck=docker.ContainerHealthcheckArgs(
            tests=list(hc.test),
            interval=_seconds(hc.interval_s),
            timeout=_seconds(hc.timeout_s),
            retries=hc.retries,
            start_period=_seconds(hc.start_period_s),
            start_interval=f"{hc.start_interval_ms}ms",
        ) if hc else None,
        # Long-running services: `pulumi up` returns only once each is healthy. One-shot jobs: `pulumi up`
        # attaches and waits for the exit instead.
        wait=hc is not None,
        wait_timeout=WAIT_TIMEOUT_S if hc else None,
        must_run=not one_shot,
        attach=one_shot or None,
        logs=one_shot or None,
        restart=spec.restart,
        max_retry_count=spec.max_retries,
        capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"], adds=list(spec.cap_add) or None),
        security_opts=list(SECURITY_OPTS),
        read_only=read_only,
        tmpfs=dict(spec.tmpfs) or None,
        stop_signal=spec.stop_signal,
        stop_timeout=spec.stop_grace_s,
        destroy_grace_seconds=spec.stop_grace_s,
        memory=spec.memory_mb,
        log_driver="json-file",
        log_opts=settings.log_opts,
        labels=[docker.ContainerLabelArgs(label=k, value=v) for k, v in sorted(all_labels.items())],
    )


def replace_opts(parent: pulumi.Resource, depends_on: Sequence[pulumi.Resource] = ()) -> pulumi.ResourceOptions:
    """Fixed container names and host ports cannot exist twice: delete the old container first, so a
    replacement never fails on a name or port conflict."""
    return pulumi.ResourceOptions(parent=parent, delete_before_replace=True, depends_on=list(depends_on))
