"""Base images for the Docker tests. The real ones when the registry answers; otherwise local
stand-ins built from Debian packages (debootstrap + docker import), cached in the engine by name.

Stand-ins honour the contract the stack relies on:
- postgres: POSTGRES_USER/DB/PASSWORD and `_FILE` forms, initdb only on an empty PGDATA, `pg_isready`
  on PATH, SIGINT shutdown, the `postgres` user at uid 999 (as in the official image).
- python: `python3`/`python` and `python3 -m venv` (with pip) at the official image's paths.
- haproxy: `haproxy -f /usr/local/etc/haproxy/haproxy.cfg` in the foreground as the `haproxy` user at
  uid/gid 99, SIGUSR1 to stop gracefully (as in the official image).
- etcd: `etcd` and `etcdctl` at /usr/local/bin, no entrypoint, data where `--data-dir` says (as in the
  official image, which is distroless: nothing else on it is relied on).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STANDIN_LABEL = "stock-analyzer.standin"
# Bump when a recipe changes: a cached stand-in with another version is rebuilt.
STANDIN_VERSIONS = {"postgres": "5", "python": "2", "haproxy": "1", "etcd": "2"}
# Debian suites by PostgreSQL major: trixie has 17, bookworm 15, bullseye 13 (the legacy major).
SUITE_OF_MAJOR = {13: "bullseye", 15: "bookworm", 17: "trixie"}


def log(msg: str) -> None:
    print(f"\n*** {msg} ***", file=sys.stderr, flush=True)


def docker(*args: str, check: bool = True, timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = subprocess.run(
        ["docker", *args], check=check, text=True, capture_output=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    return result


def image_exists(name: str) -> bool:
    return docker("image", "inspect", name, check=False).returncode == 0


def _mirror() -> str:
    text = Path("/etc/apt/sources.list.d/debian.sources").read_text()
    m = re.search(r"^URIs:\s*(\S+)", text, re.MULTILINE)
    if not m:
        raise RuntimeError("no Debian mirror in /etc/apt/sources.list.d/debian.sources")
    return m.group(1)


def _debootstrap(packages: list[str], root: Path, suite: str = "trixie") -> None:
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(root),
                    _mirror()], check=True, capture_output=True, timeout=900)


def _import(root: Path, name: str, changes: list[str], version: str) -> None:
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    args = ["docker", "import"]
    for c in [*changes, f"LABEL {STANDIN_LABEL}={version}"]:
        args += ["--change", c]
    subprocess.run([*args, "-", name], stdin=tar.stdout, check=True, capture_output=True, timeout=600)
    tar.wait(timeout=60)


def _build_postgres(name: str, major: int) -> None:
    with tempfile.TemporaryDirectory(prefix="standin-pg-") as tmp:
        root = Path(tmp) / "root"
        if major not in SUITE_OF_MAJOR:
            raise RuntimeError(f"no Debian suite with PostgreSQL {major}; stand-ins exist for {sorted(SUITE_OF_MAJOR)}")
        _debootstrap([f"postgresql-{major}", "passwd", "util-linux"], root, SUITE_OF_MAJOR[major])
        # Official image: postgres is uid/gid 999; secret files are owned by that uid.
        for cmd in (["groupmod", "-g", "999", "postgres"], ["usermod", "-u", "999", "-g", "999", "postgres"]):
            subprocess.run(["chroot", str(root), *cmd], check=True, capture_output=True)
        for d in ("var/lib/postgresql", f"etc/postgresql/{major}"):
            shutil.rmtree(root / d, ignore_errors=True)
        # As in the official image: PGDATA exists, owned by postgres, so a new volume mounted there takes
        # that ownership and the server can run unprivileged from the start.
        (root / "var/lib/postgresql/data").mkdir(parents=True, mode=0o700)
        subprocess.run(["chroot", str(root), "chown", "-R", "postgres:postgres", "/var/lib/postgresql"], check=True)
        # As in the official image: the socket directory is postgres's, mode 3777; a tmpfs mounted over it
        # (read-only root filesystem) copies that ownership and mode up.
        sock = root / "run/postgresql"
        sock.mkdir(parents=True, exist_ok=True)
        os.chown(sock, 999, 999)
        sock.chmod(0o3777)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        entry = root / "usr/local/bin/docker-entrypoint.sh"
        shutil.copy(HERE / "postgres-entrypoint.sh", entry)
        entry.chmod(0o755)
        _import(root, name, [
            f"ENV PATH=/usr/lib/postgresql/{major}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV PGDATA=/var/lib/postgresql/data",
            "ENV LANG=C.UTF-8",
            "STOPSIGNAL SIGINT",
            'ENTRYPOINT ["docker-entrypoint.sh"]',
            'CMD ["postgres"]',
            "EXPOSE 5432",
        ], STANDIN_VERSIONS["postgres"])


def _build_python(name: str) -> None:
    with tempfile.TemporaryDirectory(prefix="standin-py-") as tmp:
        root = Path(tmp) / "root"
        _debootstrap(["python3", "python3-venv", "python3-pip", "ca-certificates"], root)
        for link in ("python3", "python"):
            (root / "usr/local/bin" / link).symlink_to("/usr/bin/python3")
        for link in ("pip", "pip3"):
            (root / "usr/local/bin" / link).symlink_to("/usr/bin/pip3")
        # The official image's interpreter is not "externally managed": pip installs into it directly.
        for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        _import(root, name, [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            'CMD ["python3"]',
        ], STANDIN_VERSIONS["python"])


def _build_haproxy(name: str) -> None:
    with tempfile.TemporaryDirectory(prefix="standin-haproxy-") as tmp:
        root = Path(tmp) / "root"
        _debootstrap(["haproxy", "passwd"], root)
        for cmd in (["groupmod", "-g", "99", "haproxy"], ["usermod", "-u", "99", "-g", "99", "haproxy"]):
            subprocess.run(["chroot", str(root), *cmd], check=True, capture_output=True)
        (root / "usr/local/etc/haproxy").mkdir(parents=True, exist_ok=True)
        (root / "usr/local/sbin/haproxy").symlink_to("/usr/sbin/haproxy")
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        _import(root, name, [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "STOPSIGNAL SIGUSR1",
            "USER haproxy",
            "WORKDIR /var/lib/haproxy",
            'CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]',
        ], STANDIN_VERSIONS["haproxy"])


def _build_etcd(name: str) -> None:
    with tempfile.TemporaryDirectory(prefix="standin-etcd-") as tmp:
        root = Path(tmp) / "root"
        _debootstrap(["etcd-server", "etcd-client"], root)
        for binary in ("etcd", "etcdctl"):
            (root / "usr/local/bin" / binary).symlink_to(f"/usr/bin/{binary}")
        # The package's own data directory (the etcd user's, 0700) is no part of the official image.
        shutil.rmtree(root / "var/lib/etcd", ignore_errors=True)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        _import(root, name, [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            'CMD ["/usr/local/bin/etcd"]',
            "EXPOSE 2379 2380",
        ], STANDIN_VERSIONS["etcd"])


def _recipe(name: str) -> str:
    return name.split(":")[0].rsplit("/", 1)[-1]


def ensure_image(name: str) -> str:
    """Make `name` available locally: cached, pulled, or built as a stand-in. Returns how."""
    if image_exists(name):
        labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", name).stdout) or {}
        if STANDIN_LABEL not in labels:
            return "local"
        if labels[STANDIN_LABEL] == STANDIN_VERSIONS.get(_recipe(name)):
            return "stand-in (cached)"
        log(f"stand-in {name} is from an older recipe: rebuilding")
        docker("image", "rm", "-f", name, check=False)
    pulled = subprocess.run(["docker", "pull", "-q", name], capture_output=True, text=True, timeout=120,
                            check=False)
    if pulled.returncode == 0:
        return "pulled"
    log(f"registry unreachable for {name}: building a LOCAL STAND-IN from Debian packages "
        f"(not the official image)")
    repo = _recipe(name)
    if repo == "postgres":
        tag = name.split(":")[1]
        _build_postgres(name, int(re.match(r"\d+", tag).group(0)))  # type: ignore[union-attr]
    elif repo == "python":
        _build_python(name)
    elif repo == "haproxy":
        _build_haproxy(name)
    elif repo == "etcd":
        _build_etcd(name)
    else:
        raise RuntimeError(f"no stand-in recipe for {name}")
    return "stand-in (built)"


if __name__ == "__main__":
    for image in sys.argv[1:] or [os.environ.get("IMAGE", "")]:
        print(image, ensure_image(image))
