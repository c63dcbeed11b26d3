"""Legacy setup vs this project, side by side in one run, on the same base images and engine.

    python -m bench.bench [--runs N]

Prints, for each: time from `docker compose up` to every service healthy, final app image size, cold
image build time (no cache), and the rebuild after a one-file source change (and whether it re-ran the
dependency install). Uses loopback ports only; tears down what it starts (containers and volumes).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "app")]

from exporters import compose  # noqa: E402
from model.stack_yaml import settings_from_file  # noqa: E402
from tests.docker.standins import ensure_image  # noqa: E402

CA = Path("/etc/ssl/certs/ca-certificates.crt")
LEGACY_IMAGE = "stock-analyzer-legacy:bench"
NEW_IMAGE = "stock-analyzer-app:bench"
TIMEOUT_S = 240


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def build(context: Path, tag: str, base: str, *, no_cache: bool) -> tuple[float, str]:
    args = ["docker", "buildx", "build", "--load", "--progress=plain", "--build-arg", f"BASE_IMAGE={base}",
            "-t", tag]
    if CA.is_file():
        args += ["--secret", f"id=ca,src={CA}"]
    if no_cache:
        args.append("--no-cache")
    start = time.monotonic()
    log = run(*args, str(context))
    return time.monotonic() - start, log


def image_mb(tag: str) -> float:
    return int(run("docker", "image", "inspect", "-f", "{{.Size}}", tag).strip()) / 1e6


def wait_all_healthy(project: str, start: float) -> float:
    deadline = start + TIMEOUT_S
    while time.monotonic() < deadline:
        ids = run("docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}").split()
        if ids:
            states = json.loads(run("docker", "inspect", *ids))
            healths = [s["State"].get("Health", {}).get("Status") for s in states if s["Config"].get("Healthcheck")]
            if healths and all(h == "healthy" for h in healths):
                return time.monotonic() - start
        time.sleep(0.1)
    raise SystemExit(f"{project}: not healthy within {TIMEOUT_S} s")


def up_time(compose_file: Path, project: str, env: dict[str, str] | None = None) -> float:
    try:
        start = time.monotonic()
        run("docker", "compose", "-f", str(compose_file), "up", "-d", "--no-build", env=env)
        return wait_all_healthy(project, start)
    finally:
        run("docker", "compose", "-f", str(compose_file), "down", "--volumes", "--timeout", "10", env=env)


def legacy_context(tmp: Path) -> Path:
    ctx = tmp / "legacy"
    shutil.copytree(ROOT / "app", ctx, ignore=shutil.ignore_patterns("__pycache__", ".dockerignore", "Dockerfile"))
    shutil.copy(ROOT / "bench/legacy/Dockerfile", ctx / "Dockerfile")
    shutil.copy(ROOT / "bench/legacy/start_system.sh", ctx / "start_system.sh")
    return ctx


def reran_dependency_install(buildkit_log: str) -> bool:
    """True when a `pip install` step ran instead of coming from the cache (BuildKit plain progress)."""
    lines = [line for line in buildkit_log.splitlines() if line.startswith("#")]
    pip_steps = {line.split()[0] for line in lines if "pip install" in line}
    cached = {line.split()[0] for line in lines if line.rstrip().endswith("CACHED")}
    return bool(pip_steps - cached)


def rebuild_after_edit(context: Path, tag: str, base: str) -> tuple[float, bool]:
    web = context / "stock_app" / "web.py"
    web.write_text(web.read_text() + "\n# one-line edit\n")
    seconds, log = build(context, tag, base, no_cache=False)
    return seconds, reran_dependency_install(log)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3, help="repetitions of the up-to-healthy measurement")
    args = parser.parse_args()
    s = settings_from_file("dev")
    base_py, base_pg = s.python_base_image, s.postgres_image
    for image in (base_py, base_pg):
        print(f"base image {image}: {ensure_image(image)}")
    results: dict[str, dict[str, float | str]] = {"legacy": {}, "new": {}}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_s:
        tmp = Path(tmp_s)
        # Cold builds (no cache; base images present for both).
        lctx = legacy_context(tmp)
        nctx = tmp / "new"
        shutil.copytree(ROOT / "app", nctx, ignore=shutil.ignore_patterns("__pycache__"))
        results["legacy"]["cold build s"], _ = build(lctx, LEGACY_IMAGE, base_py, no_cache=True)
        results["new"]["cold build s"], _ = build(nctx, NEW_IMAGE, base_py, no_cache=True)
        results["legacy"]["image MB"] = image_mb(LEGACY_IMAGE)
        results["new"]["image MB"] = image_mb(NEW_IMAGE)
        for name, ctx, tag in (("legacy", lctx, LEGACY_IMAGE), ("new", nctx, NEW_IMAGE)):
            seconds, reinstalled = rebuild_after_edit(ctx, tag, base_py)
            results[name]["one-file rebuild s"] = seconds
            results[name]["deps reinstalled on one-file change"] = "yes" if reinstalled else "no"

        # Up to every service healthy. New: the committed dev stack's compose export.
        out = tmp / "deploy"
        compose.export("dev", out)
        new_file = out / "compose.yaml"
        run("docker", "tag", NEW_IMAGE, s.app_image)
        alphabet = string.ascii_letters + string.digits
        legacy_env = {"POSTGRES_IMAGE": base_pg,
                      "LEGACY_DB_PASSWORD": "".join(secrets.choice(alphabet) for _ in range(24))}
        legacy_file = tmp / "legacy-compose.yaml"
        shutil.copy(ROOT / "bench/legacy/compose.yaml.tmpl", legacy_file)
        new_times, legacy_times = [], []
        for i in range(args.runs):
            legacy_times.append(up_time(legacy_file, "stock-analyzer-legacy-bench", legacy_env))
            new_times.append(up_time(new_file, s.prefix))
            print(f"run {i + 1}: legacy {legacy_times[-1]:.1f} s, new {new_times[-1]:.1f} s", flush=True)
        results["legacy"]["up to healthy s (median)"] = sorted(legacy_times)[len(legacy_times) // 2]
        results["new"]["up to healthy s (median)"] = sorted(new_times)[len(new_times) // 2]

    print(f"\n{'figure':40} {'legacy':>10} {'new':>10} {'legacy/new':>11}")
    for key in results["legacy"]:
        lv, nv = results["legacy"][key], results["new"][key]
        if isinstance(lv, float) and isinstance(nv, float):
            print(f"{key:40} {lv:10.1f} {nv:10.1f} {lv / nv:10.2f}x")
        else:
            print(f"{key:40} {lv!s:>10} {nv!s:>10}")
    size_cut = 1 - float(results["new"]["image MB"]) / float(results["legacy"]["image MB"])
    print(f"\nimage size reduction: {size_cut:.0%}")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
