"""Serve the policy pack: `pulumi preview --policy-pack policy` (the CLI runs this file)."""

from __future__ import annotations

import os
import sys

from pulumi_policy import EnforcementLevel, PolicyPack

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from policy.pack import POLICIES

PolicyPack(name="stock-analyzer", enforcement_level=EnforcementLevel.MANDATORY, policies=list(POLICIES))
