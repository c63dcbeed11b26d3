"""Run the Pulumi program (or one component) under mocks and record everything it registers:
inputs exactly as the engine would receive them, resource options, and stack outputs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import runpy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pulumi
import pulumi.runtime
import yaml
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor

if TYPE_CHECKING:
    from model.settings import StackSettings

PROJECT = "stock-analyzer"
ROOT = Path(__file__).resolve().parent.parent


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def plain(value: Any) -> Any:
    """Unwrap RPC secrets recursively (for comparisons that do not care about secretness)."""
    if rpc.is_rpc_secret(value):
        return plain(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def is_secret(value: Any) -> bool:
    return bool(rpc.is_rpc_secret(value))


class Mocks(pulumi.runtime.Mocks):
    """Computed outputs are derived from inputs, so two runs with one config give identical state.

    `exit_codes` (resource name -> code) stands in for what the engine recorded for a finished job.
    """

    def __init__(self, exit_codes: Mapping[str, int] | None = None) -> None:
        self.exit_codes = dict(exit_codes or {})

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        state = dict(args.inputs)
        key = _digest([args.typ, args.name, plain(args.inputs)])
        if args.typ == "docker:index/image:Image":
            state["repoDigest"] = f"sha256:{key}"
        elif args.typ == "docker:index/remoteImage:RemoteImage":
            state["imageId"] = f"sha256:{key}"
        elif args.typ == "random:index/randomPassword:RandomPassword":
            # Not secret here on purpose: real providers mark it, mocks do not, so the program must.
            state["result"] = key[: int(args.inputs.get("length", 32))]
        elif args.typ == "docker:index/container:Container":
            state["exitCode"] = self.exit_codes.get(args.name, 0)
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


@dataclass
class Resource:
    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    inputs: dict[str, Any]
    dependencies: list[str]
    protect: bool
    delete_before_replace: bool
    retain_on_delete: bool
    additional_secret_outputs: list[str]
    state: dict[str, Any] = field(default_factory=dict)  # what the mocks returned (inputs + computed outputs)


@dataclass
class Recording:
    resources: list[Resource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]

    def named(self, name: str) -> Resource:
        matches = [r for r in self.resources if r.name == name]
        assert len(matches) == 1, f"expected one resource named {name}, got {len(matches)}"
        return matches[0]

    def by_urn(self, urn: str) -> Resource:
        return next(r for r in self.resources if r.urn == urn)

    def containers(self) -> dict[str, Resource]:
        """Containers by the service label the program gives them."""
        out = {}
        for r in self.of_type("docker:index/container:Container"):
            labels = {lab["label"]: lab["value"] for lab in plain(r.inputs.get("labels", []))}
            out[labels["stock-analyzer.service"]] = r
        return out


class RecordingMonitor(MockMonitor):
    def __init__(self, mocks: Mocks, recording: Recording) -> None:
        super().__init__(mocks)
        self.recording = recording

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC name)
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.type != "pulumi:pulumi:Stack":
            self.recording.resources.append(Resource(
                type=request.type,
                name=request.name,
                urn=response.urn,
                parent=request.parent,
                custom=request.custom,
                inputs=rpc.deserialize_properties(request.object),
                dependencies=sorted(request.dependencies),
                protect=bool(request.protect),
                delete_before_replace=request.deleteBeforeReplace,
                retain_on_delete=bool(request.retainOnDelete),
                additional_secret_outputs=list(request.additionalSecretOutputs),
                state=dict(self.resources[response.urn].state),
            ))
        return response

    def RegisterResourceOutputs(self, request: Any) -> Any:  # noqa: N802 (gRPC name)
        if "::pulumi:pulumi:Stack::" in request.urn:
            self.recording.outputs = rpc.deserialize_properties(request.outputs)
        return super().RegisterResourceOutputs(request)  # type: ignore[no-untyped-call]


def _capture_stack_outputs(recording: Recording) -> pulumi.Output[None]:
    """Serialize the root stack's exports the way the engine receives them (secrets stay wrapped).

    Under mocks the root stack registers its outputs before the program runs, so read them here.
    """
    from pulumi.runtime.settings import get_root_resource

    async def capture() -> None:
        root = get_root_resource()
        exports = getattr(root, "outputs", {})
        struct = await rpc.serialize_properties(dict(exports), {})
        recording.outputs = rpc.deserialize_properties(struct)

    async def true() -> bool:
        return True

    return pulumi.Output(set(), asyncio.ensure_future(capture()), true())


def settings_of(stack: str, config: Mapping[str, str]) -> StackSettings:
    """The StackSettings that `config` (keys as `committed_config` gives them) loads for `stack`."""
    from model.settings import load_settings

    prefix = f"{PROJECT}:"
    return load_settings({k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}, stack)


def committed_config(stack: str) -> dict[str, str]:
    """Config as the Pulumi CLI would pass it: Pulumi.yaml defaults, overlaid with Pulumi.<stack>.yaml."""
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    values: dict[str, Any] = {
        f"{PROJECT}:{k}": spec["default"] for k, spec in project["config"].items() if "default" in spec
    }
    values.update(yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"])
    return {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in values.items()}


DeployedReader = Callable[[str | None, str, str], Any]


def nothing_deployed(host: str | None, service: str, target: str) -> None:
    """The default under mocks: a swarm with no stack on it yet."""
    return None


def run(body: Callable[[], Any], stack: str, config: Mapping[str, str],
        secret_keys: tuple[str, ...] = (), exit_codes: Mapping[str, int] | None = None,
        deployed: DeployedReader = nothing_deployed) -> Recording:
    """`deployed` stands in for ops/swarm_state.deployed_app, the program's one read of the live swarm."""
    from ops import swarm_state

    recording = Recording()
    mocks = Mocks(exit_codes)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False,
                             monitor=RecordingMonitor(mocks, recording))
    pulumi.runtime.set_all_config(dict(config), [f"{PROJECT}:{k}" if ":" not in k else k for k in secret_keys])

    @pulumi.runtime.test
    def program() -> Any:
        body()
        return _capture_stack_outputs(recording)

    real = swarm_state.deployed_app
    swarm_state.deployed_app = deployed  # type: ignore[assignment]
    try:
        program()
    finally:
        swarm_state.deployed_app = real
    return recording


def run_program(stack: str, config: Mapping[str, str] | None = None,
                secret_keys: tuple[str, ...] = (), exit_codes: Mapping[str, int] | None = None,
                deployed: DeployedReader = nothing_deployed) -> Recording:
    """The whole program, as `pulumi up` would run it, for `stack` with `config` (default: as committed)."""
    cfg = committed_config(stack) if config is None else dict(config)
    return run(lambda: runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__"), stack, cfg, secret_keys,
               exit_codes, deployed)
