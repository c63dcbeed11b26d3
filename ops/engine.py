"""The Docker engine the deployment uses (DOCKER_HOST, or the local socket), through the Docker SDK for
Python: short-lived helper containers, volumes, and commands run inside containers."""

from __future__ import annotations

import io
import os
import socket
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import docker
import docker.errors
import requests
from docker.models.containers import Container

LOCK_LABEL = "stock-analyzer.ops-lock"


class OpsError(Exception):
    """A refusal or failure the operator must see as one clear line."""


class Progress:
    """Numbered steps with their duration, on stderr: long steps say what they are doing."""

    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total, self.n, self.quiet = total, 0, quiet

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.n += 1
        started = time.monotonic()
        self.say(f"[{self.n}/{self.total}] {what} ...")
        yield
        self.say(f"[{self.n}/{self.total}] {what}: done in {time.monotonic() - started:.1f} s")
        # Fault injection for the tests: OPS_FAIL_AFTER=N fails right after step N, as a crash or a full disk
        # would. Never set in a deployment.
        if os.environ.get("OPS_FAIL_AFTER") == str(self.n):
            raise OpsError(f"injected failure after step {self.n}")

    def say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)


class Engine:
    def __init__(self) -> None:
        try:
            self.client = docker.from_env(timeout=600)
            self.client.ping()
        except docker.errors.DockerException as err:
            where = os.environ.get("DOCKER_HOST") or "the local socket"
            raise OpsError(f"cannot reach the Docker engine at {where}: {err}") from None

    # -- volumes -------------------------------------------------------------------------------------

    def volume_exists(self, name: str) -> bool:
        try:
            self.client.volumes.get(name)
            return True
        except docker.errors.NotFound:
            return False

    def create_volume(self, name: str, labels: Mapping[str, str]) -> None:
        self.client.volumes.create(name=name, driver="local", labels=dict(labels))

    def remove_volume(self, name: str) -> None:
        with suppress(docker.errors.NotFound):
            self.client.volumes.get(name).remove(force=True)

    def volumes_labelled(self, label: str, value: str) -> list[str]:
        return sorted(str(v.name) for v in self.client.volumes.list(filters={"label": f"{label}={value}"}))

    def volume_users(self, name: str, running_only: bool = True) -> list[str]:
        return [str(c.name) for c in self.client.containers.list(all=not running_only, filters={"volume": name})]

    # -- helper containers ---------------------------------------------------------------------------

    def run(self, image: str, command: list[str], mounts: Mapping[str, tuple[str, str]], user: str = "0",
            caps: tuple[str, ...] = (), files: Mapping[str, tuple[str, int, int]] | None = None,
            network: str | None = None) -> str:
        """Run a short-lived container to completion; its output, or OpsError with its last lines. `files` are
        put in before it starts (secrets never pass through a command line or an environment); `network` for a
        helper that must reach beyond the host (an off-host repository)."""
        container = self.client.containers.create(
            image, command=command, entrypoint=[], user=user, network_mode=network or "none",
            volumes={vol: {"bind": path, "mode": mode} for vol, (path, mode) in mounts.items()},
            tmpfs={"/tmp": "rw,nosuid,nodev,size=16m"},  # noqa: S108 (the helper's own tmpfs)
            cap_drop=["ALL"], cap_add=list(caps) or None, labels={"stock-analyzer.ops": "helper"})
        try:
            if files:
                container.put_archive("/", tar_of(files))
            container.start()
            code = self._wait(container, command[0])
            out = container.logs(stdout=True, stderr=True).decode(errors="replace")
        finally:
            container.remove(force=True)
        if code != 0:
            raise OpsError(f"{command[0]} in {image} exited with {code}: {_tail(out)}")
        return out

    @staticmethod
    def _wait(container: Container, what: str, every_s: int = 30) -> int:
        """No fixed limit: a copy of a large volume takes what it takes, and says every half minute that it
        is still at work."""
        started = time.monotonic()
        while True:
            try:
                return int(container.wait(timeout=every_s)["StatusCode"])
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                print(f"    ... {what} still running after {time.monotonic() - started:.0f} s", file=sys.stderr,
                      flush=True)

    def wait_exit(self, container: Container) -> int:
        return self._wait(container, str(container.name))

    def volume_is_empty(self, image: str, name: str) -> bool:
        return self.run(image, ["sh", "-c", "ls -A /v | head -n 1"], {name: ("/v", "ro")},
                        caps=("DAC_READ_SEARCH",)).strip() == ""

    def read_file(self, image: str, volume: str, path: str) -> str | None:
        """A file's content through the engine's archive API, from a container that never starts: a secret
        read this way never passes through a container's stdout or its log."""
        container = self.client.containers.create(image, command=["true"], entrypoint=[], network_mode="none",
                                                  volumes={volume: {"bind": "/v", "mode": "ro"}},
                                                  labels={"stock-analyzer.ops": "helper"})
        try:
            stream, _ = container.get_archive(f"/v/{path}")
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.next()
                data = tar.extractfile(member) if member is not None and member.isfile() else None
                return data.read().decode() if data is not None else None
        except docker.errors.NotFound:
            return None
        finally:
            container.remove(force=True)

    def tree_digest(self, image: str, volume: str) -> str:
        """One SHA-256 over every entry's path, type, mode, owner and size and every file's content: equal
        digests, equal trees (how a copy of a data directory is proven whole)."""
        script = ("cd /v && { find . -printf '%P %y %m %U %G %s %l\\n' | LC_ALL=C sort; "
                  "find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum; } | sha256sum | cut -d' ' -f1")
        return self.run(image, ["sh", "-c", script], {volume: ("/v", "ro")}, caps=("DAC_READ_SEARCH",)).strip()

    def space(self, image: str, volume: str) -> tuple[int, int]:
        """(bytes free on the volume's filesystem, bytes the volume holds)."""
        out = self.run(image, ["sh", "-c", "df -Pk /v | awk 'NR==2 {print $4}'; du -sk /v | cut -f1"],
                       {volume: ("/v", "ro")}, caps=("DAC_READ_SEARCH",)).split()
        return int(out[0]) * 1024, int(out[1]) * 1024

    def copy_volume(self, image: str, source: str, target: str) -> None:
        """cp -a, keeping owners and modes; the source is mounted read-only, so it is never written."""
        self.run(image, ["sh", "-c", "cp -a /from/. /to/"], {source: ("/from", "ro"), target: ("/to", "rw")},
                 caps=("CHOWN", "DAC_OVERRIDE", "FOWNER", "DAC_READ_SEARCH"))

    def empty_volume(self, image: str, name: str) -> None:
        self.run(image, ["sh", "-c", "find /v -mindepth 1 -delete"], {name: ("/v", "rw")},
                 caps=("DAC_OVERRIDE", "FOWNER", "DAC_READ_SEARCH"))

    def put_file(self, image: str, volume: str, path: str, content: str, uid: int, mode: int) -> None:
        """Write one file into a volume with owner and mode, without a shell seeing its content."""
        container = self.client.containers.create(image, command=["true"], entrypoint=[], user="0",
                                                  network_mode="none", volumes={volume: {"bind": "/v", "mode": "rw"}},
                                                  labels={"stock-analyzer.ops": "helper"})
        try:
            container.put_archive("/v", tar_of({path: (content, uid, mode)}))
        finally:
            container.remove(force=True)

    # -- servers -------------------------------------------------------------------------------------

    def start(self, name: str, image: str, *, user: str, env: Mapping[str, str], mounts: Mapping[str, tuple[str, str]],
              network: str, aliases: list[str], files: Mapping[str, tuple[str, int, int]] | None = None,
              command: list[str] | None = None) -> Container:
        self.remove_container(name)
        container = self.client.containers.create(
            image, command=command, name=name, user=user, environment=dict(env),
            volumes={vol: {"bind": path, "mode": mode} for vol, (path, mode) in mounts.items()},
            labels={"stock-analyzer.ops": "server"}, network=network,
            networking_config={network: self.client.api.create_endpoint_config(aliases=aliases)},
            # As the stack's server: the socket directory on a tmpfs the server's uid owns.
            tmpfs={"/var/run/postgresql": "rw,nosuid,nodev,size=1m,uid=999,gid=999,mode=0775"},
            stop_signal="SIGINT")
        if files:
            container.put_archive("/", tar_of(files))
        container.start()
        return container

    def recovery_server(self, name: str, image: str, volume: str, *, repo: tuple[str, str], env: Mapping[str, str],
                        files: Mapping[str, tuple[str, int, int]], port: int | None = None,
                        network: str | None = None, alias: str | None = None) -> Container:
        """A server on a restored data directory that archives nothing: published on loopback only (a scratch
        for a look), or on a stack network under the server's alias (a live restore's recovery, which the
        provisioning job then reaches as it reaches the server)."""
        self.remove_container(name)
        container = self.client.containers.create(
            image, command=["postgres", "-c", "archive_mode=off"], name=name, user="999:999",
            # The local repository read-only: restore_command reads WAL from it; a recovery never writes it.
            volumes={volume: {"bind": "/var/lib/postgresql/data", "mode": "rw"},
                     repo[0]: {"bind": repo[1], "mode": "ro"}},
            ports={"5432/tcp": ("127.0.0.1", port)} if port else None, labels={"stock-analyzer.ops": "recovery"},
            tmpfs={"/var/run/postgresql": "rw,nosuid,nodev,size=1m,uid=999,gid=999,mode=0775"},
            network=network,
            networking_config={network: self.client.api.create_endpoint_config(aliases=[alias] if alias else [])}
            if network else None,
            stop_signal="SIGINT", environment=dict(env))
        container.put_archive("/", tar_of(files))
        container.start()
        return container

    def wait_ready(self, container: Container, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            container.reload()
            if container.status != "running":
                raise OpsError(f"{container.name} stopped while starting: {_tail(container.logs().decode())}")
            code, _ = container.exec_run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"])
            if code == 0:
                return
            time.sleep(0.3)
        raise OpsError(f"{container.name} not ready within {timeout_s:.0f} s")

    def sh(self, container: Container, script: str, env: Mapping[str, str] | None = None, user: str = "postgres",
           check: bool = True, stdout_only: bool = False) -> tuple[int, str]:
        """bash -c in a running container; env travels with this exec only (not in `docker inspect`).

        Returns stdout and stderr together, in the order the engine read them, which across the two
        streams is not the order they were written; `stdout_only` when the answer is on stdout (a failure
        still reports stderr)."""
        code, out = container.exec_run(["bash", "-o", "pipefail", "-c", script], environment=dict(env or {}),
                                       user=user, demux=stdout_only)
        status = -1 if code is None else int(code)
        if stdout_only:
            stdout, stderr = out if isinstance(out, tuple) else (None, None)
            text = (stdout or b"").decode(errors="replace")
            if status != 0:
                text += (stderr or b"").decode(errors="replace")
        else:
            text = out.decode(errors="replace") if isinstance(out, bytes) else ""
        if check and status != 0:
            raise OpsError(f"{script.split()[0]} in {container.name} exited with {status}: {_tail(text)}")
        return status, text

    def restart_policy(self, container: Container, policy: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The container's restart policy; with `policy`, set it first (returns the one it had)."""
        container.reload()
        before = dict(container.attrs["HostConfig"]["RestartPolicy"])
        if policy is not None:
            self.client.api.update_container(str(container.id), restart_policy=dict(policy))  # type: ignore[arg-type]
        return before

    def stop(self, container: Container, grace_s: int = 60) -> None:
        container.stop(timeout=grace_s)

    def remove_container(self, name: str) -> None:
        with suppress(docker.errors.NotFound):
            self.client.containers.get(name).remove(force=True)

    def network(self, name: str) -> None:
        self.remove_network(name)
        self.client.networks.create(name, driver="bridge", internal=True, labels={"stock-analyzer.ops": "network"})

    def remove_network(self, name: str) -> None:
        for net in self.client.networks.list(names=[name]):
            if net.name == name:
                net.remove()

    @contextmanager
    def stack_lock(self, name: str, stack: str, command: str, image: str) -> Iterator[None]:
        """Hold the stack for one operation: a container named `name` that never starts. Creating it is atomic
        on the engine, so a second holder is refused; removed when the operation ends, however it ends."""
        labels = {LOCK_LABEL: stack, f"{LOCK_LABEL}.command": command, f"{LOCK_LABEL}.pid": str(os.getpid()),
                  f"{LOCK_LABEL}.host": socket.gethostname(),
                  f"{LOCK_LABEL}.since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if not self.has_image(image):
            raise OpsError(f"no image {image} (the stack's postgresImage) here or in a registry: nothing done")
        try:
            self.client.containers.create(image, command=["true"], entrypoint=[], name=name, network_mode="none",
                                          labels=labels)
        except docker.errors.APIError as err:
            if err.status_code == 409:
                raise OpsError(self.lock_holder(name) or f"{name} appeared meanwhile: try again") from None
            raise
        try:
            yield
        finally:
            self.remove_container(name)

    def lock_holder(self, name: str) -> str | None:
        """Who holds the stack, in one line with what to do, or None when nobody does."""
        c = self.container(name)
        if c is None:
            return None
        labels = c.labels
        return (f"the stack is held by `ops {labels.get(f'{LOCK_LABEL}.command', '?')}` (pid "
                f"{labels.get(f'{LOCK_LABEL}.pid', '?')} on {labels.get(f'{LOCK_LABEL}.host', '?')}, since "
                f"{labels.get(f'{LOCK_LABEL}.since', '?')}): wait until it ends; if no such command runs any more "
                f"(it was killed), remove the lock: docker rm {name}")

    def stack_containers(self, stack: str) -> list[Container]:
        return list(self.client.containers.list(all=True, filters={"label": f"stock-analyzer.stack={stack}"}))

    def container(self, name: str) -> Container | None:
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    def has_image(self, image: str) -> bool:
        try:
            self.client.images.get(image)
            return True
        except docker.errors.ImageNotFound:
            try:
                self.client.images.pull(image)
                return True
            except docker.errors.DockerException:
                return False


def tar_of(files: Mapping[str, tuple[str, int, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, (content, uid, mode) in files.items():
            data = content.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.uid, info.gid, info.mode = len(data), uid, uid, mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "(no output)"

