"""The stack's user-defined bridge network: service names resolve as DNS aliases on it."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker


@dataclass
class NetworkArgs:
    name: str
    stack: str


class Network(pulumi.ComponentResource):
    name: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("stock-analyzer:network:Network", name, None, opts)
        network = docker.Network(
            f"{name}-bridge",
            name=args.name,
            driver="bridge",
            labels=[docker.NetworkLabelArgs(label="stock-analyzer.stack", value=args.stack)],
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.name = network.name
        self.register_outputs({"name": self.name})
