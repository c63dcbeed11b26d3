"""The typed model of a stack: settings read and validated from config, and the swarm model derived from them.
Pure Python: it never imports Pulumi or the Docker SDK; everything else is derived from it."""
