"""Scheduled logical backups: one long-running container (backup/backup.sh) beside the database, writing
checked dumps into the stack's backups volume (protected with the data in prod)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_docker as docker

from components.containers import container_args, replace_opts
from model.settings import StackSettings


@dataclass
class BackupArgs:
    settings: StackSettings
    image: pulumi.Input[str]  # the stack's Postgres image: pg_dump of the server's own major
    network_names: Mapping[str, pulumi.Input[str]]
    passwords: Mapping[str, pulumi.Output[str]]
    volume_names: Mapping[str, pulumi.Input[str]]
    # Starts after the healthy database and its provisioning (which hands it the backup directory).
    depends_on: Sequence[pulumi.Resource] = field(default_factory=list)
    pitr_image: pulumi.Input[str] | None = None  # with pitr: the server's image (pgBackRest), for db-pitr


class Backup(pulumi.ComponentResource):
    container_name: pulumi.Output[str]

    def __init__(self, name: str, args: BackupArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("stock-analyzer:backup:Backup", name, None, opts)
        s = args.settings
        container = docker.Container(
            f"{name}-runner",
            container_args(s.backup, s, image=args.image, network_names=args.network_names,
                           passwords=args.passwords, volume_names=args.volume_names),
            opts=replace_opts(self, depends_on=args.depends_on),
        )
        self.container_name = container.name
        outputs: dict[str, pulumi.Output[str]] = {"container_name": self.container_name}
        if s.pitr_runner is not None:
            assert args.pitr_image is not None, "pitr needs the server's image"
            pitr = docker.Container(
                f"{name}-pitr",
                container_args(s.pitr_runner, s, image=args.pitr_image, network_names=args.network_names,
                               passwords=args.passwords, volume_names=args.volume_names),
                opts=replace_opts(self, depends_on=args.depends_on),
            )
            outputs["pitr_container_name"] = pitr.name
        self.register_outputs(outputs)
