"""Operations on a deployed stack's data: `python -m components.ops --help`. Pure of Pulumi: it reads the
stack file (components/stack_file.py) and talks to the Docker engine the deployment uses."""
