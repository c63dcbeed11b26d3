"""Policy as code for stock-analyzer: rules (rules.py) shared by the Pulumi policy pack (pack.py,
run with `pulumi preview --policy-pack policy`) and the compose export's tests."""
