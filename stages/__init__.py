"""One Typer command per DVC stage: read params and inputs, call dbdpo, write artifacts."""
