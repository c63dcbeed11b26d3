"""stock-analyzer on Docker: read and validate stack config, instantiate the components, export."""

from __future__ import annotations

import pulumi

from components.app import App, AppArgs
from components.backup import Backup, BackupArgs
from components.config import read_deployed_app, read_stack_config
from components.credentials import Credentials, CredentialsArgs
from components.database import Database, DatabaseArgs
from components.network import Network, NetworkArgs
from components.swarm import SwarmFiles, SwarmFilesArgs, SwarmServices, SwarmServicesArgs
from exporters.compose import compose_text
from model.settings import (
    SECRET_ADMIN,
    SECRET_APP_DB,
    SECRET_BACKUP_DB,
    SECRET_PITR_CIPHER,
    SECRET_POSTGRES,
)
from model.swarm import PROXY_SERVICE, swarm_model

stack = pulumi.get_stack()
# Fails with one message naming key, value and what is allowed, before any resource is registered.
settings, provided_passwords = read_stack_config(stack)
# On a swarm the app's login role follows what runs now; an unreadable manager fails here, before any resource.
deployed = read_deployed_app(settings) if settings.target == "swarm" else None

credentials = Credentials("credentials", CredentialsArgs(
    secrets=(*settings.generated_secrets, *settings.supplied_secrets), provided=provided_passwords,
    versions=settings.secret_versions))


def single_host() -> None:
    """One Docker engine: containers, bridge networks, volumes, the image built locally."""
    network = Network("network", NetworkArgs(names=settings.networks, stack=stack))
    database = Database("database", DatabaseArgs(
        settings=settings, network_names=network.names, passwords=credentials.passwords))
    app = App("app", AppArgs(
        settings=settings,
        context="app",
        network_names=network.names,
        passwords=credentials.passwords,
        volume_names=database.volume_names,
        depends_on=[database.server, database.provision],
        provisioned=database.provisioned,
    ))

    backup = Backup("backup", BackupArgs(
        settings=settings,
        image=database.image_id,
        pitr_image=database.server_image if settings.pitr else None,
        network_names=network.names,
        passwords=credentials.passwords,
        volume_names=database.volume_names,
        depends_on=[database.server, database.provision],
    ))

    urls = {spec.service: f"http://{spec.ports[0].host_ip}:{spec.ports[0].host_port}" for spec in settings.apps}
    pulumi.export("environment", settings.environment)
    pulumi.export("api_url", urls["api"])
    pulumi.export("frontend_url", urls["frontend"])
    pulumi.export("admin_url", urls["admin"])
    pulumi.export("admin_user", settings.admin_user)
    pulumi.export("networks", network.names)
    pulumi.export("data_volume", database.volume_name)
    pulumi.export("app_image", app.image_ref)
    pulumi.export("containers", {"postgres": database.container_name, **app.container_names,
                                  "db-backup": backup.container_name})
    # The same deployment as a compose file (no secret values in it): `pulumi stack output compose`.
    pulumi.export("compose", compose_text(settings))
    # Secrets: revealed only on purpose, with `pulumi stack output --show-secrets NAME`.
    pulumi.export("postgres_password", credentials.passwords[SECRET_POSTGRES.name])
    pulumi.export("app_db_password", credentials.passwords[SECRET_APP_DB.name])
    pulumi.export("admin_password", credentials.passwords[SECRET_ADMIN.name])
    pulumi.export("backup_db_password", credentials.passwords[SECRET_BACKUP_DB.name])
    if SECRET_PITR_CIPHER.name in credentials.passwords:
        # Without it the off-host repository cannot be read: keep a copy away from the host (docs/recovery.md).
        pulumi.export("pitr_cipher_key", credentials.passwords[SECRET_PITR_CIPHER.name])


def swarm() -> None:
    """A Swarm cluster (DOCKER_HOST is a manager): services from the swarm model, in order (docs/swarm.md)."""
    model = swarm_model(settings)
    sw = settings.swarm
    assert sw is not None
    network = Network("network", NetworkArgs(names=settings.networks, stack=stack, driver="overlay",
                                              options={"encrypted": ""} if sw.encrypted else {}))
    files = SwarmFiles("files", SwarmFilesArgs(model=model, settings=settings, passwords=credentials.passwords,
                                               deployed=deployed))
    # etcd's members only turn healthy together (a quorum), so they start at once, before the database.
    dcs = SwarmServices("dcs", SwarmServicesArgs(
        model=model, settings=settings, files=files, network_ids=network.ids, services=model.dcs),
    ) if model.dcs else None
    database = SwarmServices("database", SwarmServicesArgs(
        model=model, settings=settings, files=files, network_ids=network.ids, services=model.database, chain=True,
        depends_on=list(dcs.services.values()) if dcs else []))
    apps = SwarmServices("app", SwarmServicesArgs(
        model=model, settings=settings, files=files, network_ids=network.ids,
        services=[svc for svc in model.services if svc.name in {a.service for a in settings.apps}
                  or svc.name == settings.backup.service],
        depends_on=list(database.services.values())))
    retire = SwarmServices("retire", SwarmServicesArgs(
        model=model, settings=settings, files=files, network_ids=network.ids, services=[model.retire],
        depends_on=list(apps.services.values())))
    edge = SwarmServices("edge", SwarmServicesArgs(
        model=model, settings=settings, files=files, network_ids=network.ids,
        services=[svc for svc in model.services if svc.name == PROXY_SERVICE],
        depends_on=list(apps.services.values())))
    pulumi.export("environment", settings.environment)
    pulumi.export("target", "swarm")
    pulumi.export("endpoint_mode", sw.endpoint_mode)
    pulumi.export("published_ports", {svc: port for svc, port, _ in sw.proxy_ports if sw.published(svc)})
    pulumi.export("networks", network.names)
    dcs_names = dcs.service_names if dcs else {}
    pulumi.export("services", {**dcs_names, **database.service_names, **apps.service_names, **retire.service_names,
                               **edge.service_names})
    pulumi.export("app_image", settings.app_image)
    pulumi.export("postgres_password", credentials.passwords[SECRET_POSTGRES.name])
    pulumi.export("app_db_password", credentials.passwords[SECRET_APP_DB.name])
    pulumi.export("admin_password", credentials.passwords[SECRET_ADMIN.name])
    pulumi.export("backup_db_password", credentials.passwords[SECRET_BACKUP_DB.name])


if settings.target == "swarm":
    swarm()
else:
    single_host()
