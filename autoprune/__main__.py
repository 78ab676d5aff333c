"""``python -m autoprune`` runs the CLI."""

from autoprune.cli import main

main()
