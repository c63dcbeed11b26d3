"""The stack's user-defined networks (bridge on one host, overlay on a swarm): service names resolve as
DNS aliases on each.

Two, so that what faces people cannot reach the database: the backend (Postgres, the provisioning job,
the API, the admin UI) and the frontend network (the frontend and the API only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_docker as docker


@dataclass
class NetworkArgs:
    names: Mapping[str, str]  # logical name -> engine name (StackSettings.networks)
    stack: str
    driver: str = "bridge"  # "overlay" for the swarm target
    options: Mapping[str, str] = field(default_factory=dict)  # e.g. {"encrypted": ""} (IPsec between nodes)


class Network(pulumi.ComponentResource):
    names: dict[str, pulumi.Output[str]]
    ids: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("stock-analyzer:network:Network", name, None, opts)
        self.names, self.ids = {}, {}
        for logical, engine_name in sorted(args.names.items()):
            network = docker.Network(
                f"{name}-{logical}",
                name=engine_name,
                driver=args.driver,
                options=dict(args.options) or None,
                labels=[docker.NetworkLabelArgs(label="stock-analyzer.stack", value=args.stack),
                        docker.NetworkLabelArgs(label="stock-analyzer.network", value=logical)],
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.names[logical] = network.name
            self.ids[logical] = network.id
        self.register_outputs({"names": self.names, "ids": self.ids})
