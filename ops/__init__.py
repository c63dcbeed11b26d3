"""Operations on a deployed stack's data: `python -m ops --help`. Pure of Pulumi: it reads the
stack file (model/stack_yaml.py) and talks to the Docker engine the deployment uses."""
