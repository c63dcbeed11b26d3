"""The Pulumi policies, built from the shared rules. `__main__.py` serves them as a policy pack."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

# The CLI runs the pack from this directory; import the rules as the `policy` package either way.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from policy.rules import CONTAINER_RULES, ContainerView, from_pulumi, from_pulumi_service, pinned_image

CONTAINER = "docker:index/container:Container"
SERVICE = "docker:index/service:Service"  # the swarm target: the same rules over each service's container
VOLUME = "docker:index/volume:Volume"


def _container_policy(name: str, description: str,
                      rule: Callable[[ContainerView], list[str]]) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if args.resource_type == CONTAINER:
            view = from_pulumi(args.name, args.props)
        elif args.resource_type == SERVICE:
            view = from_pulumi_service(args.name, args.props)
        else:
            return
        for message in rule(view):
            report_violation(message, None)

    return ResourceValidationPolicy(name=name, description=description, validate=validate,
                                    enforcement_level=EnforcementLevel.MANDATORY)


def _pinned_image_refs(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Images pulled or built by name: RemoteImage.name and Image.imageName."""
    ref = {"docker:index/remoteImage:RemoteImage": "name", "docker:index/image:Image": "imageName"}.get(
        args.resource_type)
    if ref and isinstance(args.props.get(ref), str):
        for message in pinned_image(args.name, args.props[ref]):
            report_violation(message, None)


def _prod_volumes_protected(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != VOLUME:
        return
    labels = {lab["label"]: lab["value"] for lab in args.props.get("labels") or []}
    if labels.get("stock-analyzer.environment") == "prod" and not args.opts.protect:
        report_violation(f"{args.name}: data volume in prod is not protected (protect=True)", None)


POLICIES: list[ResourceValidationPolicy] = [
    *(_container_policy(name, description, rule) for name, (description, rule) in CONTAINER_RULES.items()),
    ResourceValidationPolicy(name="pinned-image-references", description="Pulled and built images are pinned.",
                             validate=_pinned_image_refs, enforcement_level=EnforcementLevel.MANDATORY),
    ResourceValidationPolicy(name="prod-data-volumes-protected",
                             description="Data volumes in prod are protected from deletion.",
                             validate=_prod_volumes_protected, enforcement_level=EnforcementLevel.MANDATORY),
]
