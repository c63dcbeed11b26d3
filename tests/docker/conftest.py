from __future__ import annotations

from pathlib import Path

import pytest

from model.settings import StackSettings
from model.stack_yaml import settings_from_file
from tests.docker.standins import ensure_image

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.fixture(scope="session")
def dev_settings() -> StackSettings:
    return settings_from_file("dev")


BASE_IMAGES_USED: dict[str, str] = {}


@pytest.fixture(scope="session")
def base_images(docker_cli: str, dev_settings: StackSettings) -> dict[str, str]:
    """The committed dev config's base images: pulled, or local stand-ins (said loudly in the log, and
    again in the terminal summary, which pytest shows even when every test passes)."""
    used = {img: ensure_image(img) for img in (dev_settings.postgres_image, dev_settings.python_base_image)}
    BASE_IMAGES_USED.update(used)
    return used


def ca_bundle() -> Path | None:
    return CA_BUNDLE if CA_BUNDLE.is_file() else None
