"""The app image build and its three services (API, frontend, admin), all from one image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_docker as docker

from components.containers import container_args, replace_opts
from model.settings import StackSettings


@dataclass
class AppArgs:
    settings: StackSettings
    context: str
    # Engine names of the stack networks by logical name (StackSettings.networks).
    network_names: Mapping[str, pulumi.Input[str]]
    passwords: Mapping[str, pulumi.Output[str]]
    # Engine names of the stack's volumes by logical name (the app mounts the credential volume).
    volume_names: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    # Resources every app container must start after (the healthy database and its provisioning).
    depends_on: Sequence[pulumi.Resource] = field(default_factory=list)
    provisioned: pulumi.Input[str] = "ok"


class App(pulumi.ComponentResource):
    image_ref: pulumi.Output[str]
    container_names: dict[str, pulumi.Output[str]]
    containers: dict[str, docker.Container]

    def __init__(self, name: str, args: AppArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("stock-analyzer:app:App", name, None, opts)
        s = args.settings
        image = docker.Image(
            f"{name}-image",
            image_name=s.app_image,
            build=docker.DockerBuildArgs(
                context=args.context,
                dockerfile=f"{args.context}/Dockerfile",
                args=dict(s.app_build_args),
                builder_version=docker.BuilderVersion.BUILDER_BUILD_KIT,
            ),
            # Local stacks: the image stays in the engine it was built in.
            skip_push=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        # The digest (image ID for local builds) changes with every rebuild, so containers roll.
        self.image_ref = image.repo_digest
        self.containers = {}
        for spec in s.apps:
            self.containers[spec.service] = docker.Container(
                f"{name}-{spec.service}",
                container_args(spec, s, image=self.image_ref, network_names=args.network_names,
                               passwords=args.passwords, volume_names=args.volume_names,
                               labels={"stock-analyzer.db-provisioned": args.provisioned}),
                opts=replace_opts(self, depends_on=args.depends_on),
            )
        self.container_names = {svc: c.name for svc, c in self.containers.items()}
        self.register_outputs({"image_ref": self.image_ref, "container_names": self.container_names})
