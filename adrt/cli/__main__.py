"""``python -m adrt.cli ...``: the `adrt` command."""
from adrt.cli import main

main()
