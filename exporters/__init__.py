"""The exporters: the compose file (one host) and the stack file (swarm), written from the model alone,
for hosts without the Pulumi CLI. `python -m exporters.compose --help`."""
