"""`python -m optimum_blockprune.architectures`: print the README's architecture table from the registry."""

from . import architecture_table

print(architecture_table())
