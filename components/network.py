"""The stack's user-defined bridge networks: service names resolve as DNS aliases on each.

Two, so that what faces people cannot reach the database: the backend (Postgres, the provisioning job,
the API, the admin UI) and the frontend network (the frontend and the API only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker


@dataclass
class NetworkArgs:
    names: Mapping[str, str]  # logical name -> engine name (StackSettings.networks)
    stack: str


class Network(pulumi.ComponentResource):
    names: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("stock-analyzer:network:Network", name, None, opts)
        self.names = {}
        for logical, engine_name in sorted(args.names.items()):
            network = docker.Network(
                f"{name}-{logical}",
                name=engine_name,
                driver="bridge",
                labels=[docker.NetworkLabelArgs(label="stock-analyzer.stack", value=args.stack),
                        docker.NetworkLabelArgs(label="stock-analyzer.network", value=logical)],
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.names[logical] = network.name
        self.register_outputs({"names": self.names})
