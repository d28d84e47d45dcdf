"""`python -m sockd`."""

from sockd.cli import main

main()
