"""The swarm target: the swarm model (model/swarm.py) as pulumi-docker Swarm resources.

`pulumi up` against a Swarm manager (DOCKER_HOST) creates content-named secrets and configs, the overlay
networks, and the services in order: Postgres, the provisioning job, the apps, the job again to retire
a replaced app role, the edge proxy. Each replicated service converges (every task running and healthy)
before the next is touched. A rotation replaces a secret: the new one is created, the services roll
onto it, then the old one is deleted (Pulumi's create-before-delete).
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_docker as docker

from model.settings import SECRET_APP_DB, SECRET_SWARM_NAME_KEY, StackSettings
from model.swarm import (
    APP_CREDENTIALS_SECRET,
    APP_ROLE_LABEL,
    DeployedApp,
    FileRef,
    ServiceSpec,
    SwarmModel,
    content_name,
    credentials_text,
    deployed_app_role,
)

# `pulumi up` waits this long for a service's tasks to run healthy; then the update fails.
CONVERGE_TIMEOUT = "5m"
CONVERGE_DELAY = "2s"


def _keyed_name(prefix: str, logical: str, value_and_key: list[str]) -> str:
    return content_name(prefix, logical, value_and_key[0], value_and_key[1])


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass
class SwarmFilesArgs:
    model: SwarmModel
    settings: StackSettings
    passwords: Mapping[str, pulumi.Output[str]]
    # What the API service runs now (components/config.py read_deployed_app); None before the first deploy.
    deployed: DeployedApp | None = None


class SwarmFiles(pulumi.ComponentResource):
    """Swarm secrets and configs, each named by its content: Swarm cannot change one in place."""

    secrets: dict[str, docker.Secret]
    configs: dict[str, docker.ServiceConfig]
    app_role: pulumi.Output[str]

    def __init__(self, name: str, args: SwarmFilesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("stock-analyzer:swarm:SwarmFiles", name, None, opts)
        m, s = args.model, args.settings
        password, name_key = args.passwords[SECRET_APP_DB.name], args.passwords[SECRET_SWARM_NAME_KEY.name]
        version = s.secret_versions.get(SECRET_APP_DB.name, 1)
        role = pulumi.Output.all(password, name_key).apply(lambda v: deployed_app_role(
            s.db_app_user, m.stack_name, v[0], v[1], args.deployed, version))
        # Derived from secrets, but a role name is no secret: the services carry it as a label.
        self.app_role = pulumi.Output.unsecret(role)
        values: dict[str, pulumi.Output[str]] = dict(args.passwords)
        values[APP_CREDENTIALS_SECRET] = pulumi.Output.all(role, password).apply(lambda v: credentials_text(*v))
        labels = [docker.SecretLabelArgs(label="stock-analyzer.stack", value=s.stack)]
        self.secrets = {}
        for logical in m.secrets:
            value = values[logical]
            # A keyed hash of the value names the object (model/swarm.py content_name).
            object_name: pulumi.Output[str] = pulumi.Output.all(value, name_key).apply(
                functools.partial(_keyed_name, m.stack_name, logical))
            self.secrets[logical] = docker.Secret(
                f"{name}-{logical.replace('_', '-')}",
                # The name gives nothing away (a keyed hash), so it is shown in previews; the value stays secret.
                name=pulumi.Output.unsecret(object_name),
                # Derived from a secret output, so itself secret (checked by the unit tests).
                data=value.apply(_b64),
                labels=labels,
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.configs = {
            logical: docker.ServiceConfig(
                f"{name}-{logical.replace('_', '-')}",
                name=content_name(m.stack_name, logical, content),
                data=_b64(content),
                labels=[docker.ServiceConfigLabelArgs(label="stock-analyzer.stack", value=s.stack)],
                opts=pulumi.ResourceOptions(parent=self),
            )
            for logical, (_, content) in m.configs.items()
        }
        self.register_outputs({"secret_names": {k: v.name for k, v in self.secrets.items()},
                               "config_names": {k: v.name for k, v in self.configs.items()},
                               "app_role": self.app_role})


def _duration(seconds: int) -> str:
    return f"{seconds}s"


def service_args(svc: ServiceSpec, m: SwarmModel, log_opts: Mapping[str, str], files: SwarmFiles,
                 network_ids: Mapping[str, pulumi.Input[str]]) -> docker.ServiceArgs:
    """One service from its spec: the single mapping from the model to the provider's inputs."""
    hc = svc.healthcheck

    def secret_ref(r: FileRef) -> docker.ServiceTaskSpecContainerSpecSecretArgs:
        secret = files.secrets[r.source]
        return docker.ServiceTaskSpecContainerSpecSecretArgs(
            secret_id=secret.id, secret_name=secret.name, file_name=r.target, file_uid=str(r.uid),
            file_gid=str(r.gid), file_mode=r.mode)

    def config_ref(r: FileRef) -> docker.ServiceTaskSpecContainerSpecConfigArgs:
        config = files.configs[r.source]
        return docker.ServiceTaskSpecContainerSpecConfigArgs(
            config_id=config.id, config_name=config.name, file_name=r.target, file_uid=str(r.uid),
            file_gid=str(r.gid), file_mode=r.mode)

    mounts = [
        docker.ServiceTaskSpecContainerSpecMountArgs(type="volume", target=mt.target, source=m.volumes[mt.source],
                                                     read_only=mt.read_only or None)
        if mt.type == "volume" else
        docker.ServiceTaskSpecContainerSpecMountArgs(
            type="tmpfs", target=mt.target,
            tmpfs_options=docker.ServiceTaskSpecContainerSpecMountTmpfsOptionsArgs(size_bytes=mt.size_bytes))
        for mt in svc.mounts
    ]
    update = docker.ServiceUpdateConfigArgs(
        parallelism=svc.update.parallelism, delay=_duration(svc.update.delay_s), order=svc.update.order,
        failure_action=svc.update.failure_action, monitor=_duration(svc.update.monitor_s), max_failure_ratio="0")
    rollback = docker.ServiceRollbackConfigArgs(
        parallelism=svc.update.parallelism, delay=_duration(svc.update.delay_s), order=svc.update.order,
        failure_action="pause", monitor=_duration(svc.update.monitor_s), max_failure_ratio="0")
    restart = svc.restart
    return docker.ServiceArgs(
        name=f"{m.stack_name}_{svc.name}",
        # Service labels change in place (no task restarts); the app role one is read by the next run.
        labels=[docker.ServiceLabelArgs(label=k, value=v) for k, v in svc.labels]
        + ([docker.ServiceLabelArgs(label=APP_ROLE_LABEL, value=files.app_role)]
           if any(r.source == APP_CREDENTIALS_SECRET for r in svc.secrets) else []),
        task_spec=docker.ServiceTaskSpecArgs(
            container_spec=docker.ServiceTaskSpecContainerSpecArgs(
                image=svc.image,
                # The provider's `commands` is the entrypoint override, `args` the command.
                commands=list(svc.entrypoint) if svc.entrypoint is not None else None,
                args=list(svc.command) or None,
                env=dict(svc.env),
                user=svc.user,
                read_only=svc.read_only,
                cap_drops=["ALL"],
                cap_adds=list(svc.cap_add) or None,
                mounts=mounts or None,
                secrets=[secret_ref(r) for r in svc.secrets] or None,
                configs=[config_ref(r) for r in svc.configs] or None,
                healthcheck=docker.ServiceTaskSpecContainerSpecHealthcheckArgs(
                    tests=list(hc.test), interval=_duration(hc.interval_s), timeout=_duration(hc.timeout_s),
                    start_period=_duration(hc.start_period_s), retries=hc.retries) if hc else None,
                stop_signal=svc.stop_signal,
                stop_grace_period=_duration(svc.stop_grace_s),
                labels=[docker.ServiceTaskSpecContainerSpecLabelArgs(label=k, value=v) for k, v in svc.labels],
            ),
            resources=docker.ServiceTaskSpecResourcesArgs(
                limits=docker.ServiceTaskSpecResourcesLimitsArgs(memory_bytes=svc.memory_limit_mb * 1024**2)
                if svc.memory_limit_mb else None,
                reservation=docker.ServiceTaskSpecResourcesReservationArgs(
                    memory_bytes=svc.memory_reservation_mb * 1024**2) if svc.memory_reservation_mb else None,
            ),
            restart_policy=docker.ServiceTaskSpecRestartPolicyArgs(
                condition=restart.condition, delay=_duration(restart.delay_s), max_attempts=restart.max_attempts,
                window="0s"),
            placement=docker.ServiceTaskSpecPlacementArgs(constraints=list(svc.constraints))
            if svc.constraints else None,
            # The network ID, not its name: the provider reads back IDs only, so a name would diff forever.
            # The service name as an alias: `postgres`, `api` and `tasks.api` resolve as in a stack deploy.
            networks_advanceds=[docker.ServiceTaskSpecNetworksAdvancedArgs(
                id=network_ids[net], aliases=sorted({svc.name, *aliases})) for net, aliases in svc.networks],
            log_driver=docker.ServiceTaskSpecLogDriverArgs(name="json-file", options=dict(log_opts)),
        ),
        mode=docker.ServiceModeArgs(global_=True) if svc.global_mode
        else docker.ServiceModeArgs(replicated=docker.ServiceModeReplicatedArgs(replicas=svc.replicas)),
        endpoint_spec=docker.ServiceEndpointSpecArgs(
            mode=svc.endpoint_mode,
            ports=[docker.ServiceEndpointSpecPortArgs(target_port=p.target, published_port=p.published,
                                                      publish_mode=p.mode, protocol="tcp") for p in svc.ports] or None),
        update_config=update,
        rollback_config=rollback,
        # The provider cannot converge a global service (it counts replicas); the proxy has no healthcheck.
        converge_config=None if svc.global_mode else docker.ServiceConvergeConfigArgs(
            delay=CONVERGE_DELAY, timeout=CONVERGE_TIMEOUT),
    )


@dataclass
class SwarmServicesArgs:
    model: SwarmModel
    settings: StackSettings
    files: SwarmFiles
    network_ids: Mapping[str, pulumi.Input[str]]
    services: Sequence[ServiceSpec]
    depends_on: Sequence[pulumi.Resource] = field(default_factory=list)
    # Each service waits for the one before it (Postgres, then its job): Swarm itself orders nothing.
    chain: bool = False


class SwarmServices(pulumi.ComponentResource):
    """One concern's services (the database, the apps, the edge), created after `depends_on` converged."""

    services: dict[str, docker.Service]
    service_names: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: SwarmServicesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("stock-analyzer:swarm:SwarmServices", name, None, opts)
        self.services = {}
        previous: list[pulumi.Resource] = list(args.depends_on)
        for svc in args.services:
            service = docker.Service(
                f"{name}-{svc.name}",
                service_args(svc, args.model, args.settings.log_opts, args.files, args.network_ids),
                # Fixed names cannot exist twice; and never two Postgres servers on one data directory. Only
                # networks, aliases and container labels force a replacement (docs/swarm.md).
                opts=pulumi.ResourceOptions(parent=self, depends_on=previous, delete_before_replace=True),
            )
            self.services[svc.name] = service
            if args.chain:
                previous = [*args.depends_on, service]
        self.service_names = {k: v.name for k, v in self.services.items()}
        self.register_outputs({"service_names": self.service_names})
