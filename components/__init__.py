"""Pulumi component resources for the stock-analyzer deployment, one per concern."""
