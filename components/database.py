"""Postgres: pinned image, per-stack data volume, the server container, and the provisioning job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.containers import container_args, replace_opts
from model.settings import (
    VOL_APP_CREDENTIALS,
    VOL_BACKUPS,
    VOL_DATA,
    VOL_PITR_REPO,
    VOL_PITR_SCRATCH,
    VOL_PITR_SOCKET,
    VOL_PITR_WALSTREAM,
    VOL_PROVISION_STATE,
    StackSettings,
)


@dataclass
class DatabaseArgs:
    settings: StackSettings
    # Engine names of the stack networks by logical name (StackSettings.networks).
    network_names: Mapping[str, pulumi.Input[str]]
    passwords: Mapping[str, pulumi.Output[str]]


_VOLUME_ROLES = {VOL_DATA: "data", VOL_APP_CREDENTIALS: "app-credentials", VOL_PROVISION_STATE: "provision-state",
                 VOL_BACKUPS: "backups", VOL_PITR_REPO: "pgbackrest", VOL_PITR_SOCKET: "socket",
                 VOL_PITR_SCRATCH: "pitr-scratch", VOL_PITR_WALSTREAM: "walstream"}


class Database(pulumi.ComponentResource):
    container_name: pulumi.Output[str]
    volume_name: pulumi.Output[str]
    volume_names: dict[str, pulumi.Output[str]]
    image_id: pulumi.Output[str]
    server_image: pulumi.Output[str]  # the Postgres image, or with pitr the one built from it with pgBackRest
    provisioned: pulumi.Output[str]
    server: docker.Container
    provision: docker.Container

    def __init__(self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("stock-analyzer:database:Database", name, None, opts)
        s = args.settings
        image = docker.RemoteImage(
            f"{name}-image",
            name=s.postgres_image,
            keep_locally=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        volumes = {
            logical: docker.Volume(
                f"{name}-{_VOLUME_ROLES[logical]}",
                name=engine_name,
                driver_opts=s.volume_driver_opts.get(logical),
                labels=[docker.VolumeLabelArgs(label="stock-analyzer.environment", value=s.environment),
                        docker.VolumeLabelArgs(label="stock-analyzer.stack", value=s.stack)],
                # retain_on_delete keeps the data if the volume resource is ever deleted from the program;
                # protect makes `pulumi destroy` refuse in the first place. The provisioning state (the
                # previous superuser password) is protected with the data it unlocks, the backups with the
                # data they restore.
                opts=pulumi.ResourceOptions(parent=self, protect=s.protect_data, retain_on_delete=s.protect_data),
            )
            for logical, engine_name in s.volumes.items()
        }
        self.volume_names = {logical: v.name for logical, v in volumes.items()}
        self.server_image = image.image_id
        if s.pitr:
            built = docker.Image(
                f"{name}-pitr-image",
                image_name=s.pitr.image,
                build=docker.DockerBuildArgs(context="pitr", dockerfile="pitr/Dockerfile",
                                             args={"POSTGRES_IMAGE": s.postgres_image},
                                             builder_version=docker.BuilderVersion.BUILDER_BUILD_KIT),
                skip_push=True,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[image]),
            )
            self.server_image = built.repo_digest
        # Two servers must never share one data directory: delete before replace.
        self.server = docker.Container(
            f"{name}-server",
            container_args(s.postgres, s, image=self.server_image, network_names=args.network_names,
                           passwords=args.passwords, volume_names=self.volume_names),
            opts=replace_opts(self),
        )
        before_provision: list[pulumi.Resource] = [self.server]
        if s.wal_receiver:
            # Commits wait for it: it runs before anything writes (the provisioning job first).
            before_provision.append(docker.Container(
                f"{name}-walreceiver",
                container_args(s.wal_receiver, s, image=self.server_image, network_names=args.network_names,
                               passwords=args.passwords, volume_names=self.volume_names),
                opts=replace_opts(self, depends_on=[self.server]),
            ))
        self.provision = docker.Container(
            f"{name}-provision",
            container_args(s.provision, s, image=image.image_id, network_names=args.network_names,
                           passwords=args.passwords, volume_names=self.volume_names),
            opts=replace_opts(self, depends_on=before_provision),
        )
        self.container_name = self.server.name
        self.volume_name = self.volume_names[VOL_DATA]
        self.image_id = image.image_id
        self.provisioned = pulumi.Output.all(self.provision.exit_code, self.provision.urn).apply(
            lambda code_urn: _require_success(code_urn[0], code_urn[1], s.stack, s.provision.container_name))
        self.register_outputs({
            "container_name": self.container_name,
            "volume_name": self.volume_name,
            "volume_names": self.volume_names,
            "image_id": self.image_id,
            "server_image": self.server_image,
            "provisioned": self.provisioned,
        })


def _require_success(code: int | None, urn: str, stack: str, container: str) -> str:
    """Fail the update when the provisioning job failed, before any app container is touched.

    The docker provider keeps a finished job in state with its exit code; with unchanged inputs a plain
    `pulumi up` would not run it again and would fail the same way. The message names the one command
    that re-runs it (the job is idempotent and safe to repeat).
    """
    if code not in (0, None):
        raise RuntimeError(
            f"database provisioning exited with code {code} (see `docker logs {container}`); after fixing the "
            f"cause, run the job again with: pulumi up --stack {stack} --replace '{urn}'"
        )
    return "ok"
