"""Generated credentials: one RandomPassword per secret unless the stack supplies its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_random as random

from model.settings import SecretSpec


@dataclass
class CredentialsArgs:
    secrets: Sequence[SecretSpec]
    # Values a user set with `pulumi config set --secret`; these replace the generated ones.
    provided: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    # Rotation triggers: a changed version replaces exactly that password (keepers).
    versions: Mapping[str, int] = field(default_factory=dict)


class Credentials(pulumi.ComponentResource):
    """Owns every password so that rotating one is a change to exactly one resource."""

    passwords: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: CredentialsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("stock-analyzer:credentials:Credentials", name, None, opts)
        self.passwords = {}
        for spec in args.secrets:
            if spec.name in args.provided:
                value = args.provided[spec.name]
            else:
                # Alphanumeric only: the value lands in SQL, URLs and files without any escaping.
                generated = random.RandomPassword(
                    f"{name}-{spec.name.replace('_', '-')}",
                    length=spec.length,
                    special=False,
                    keepers={"version": str(args.versions.get(spec.name, 1))} if spec.configurable else None,
                    opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["result"]),
                )
                value = generated.result
            # Mocks (and some providers) do not mark outputs secret; make it explicit.
            self.passwords[spec.name] = pulumi.Output.secret(value)
        self.register_outputs(dict(self.passwords))
