"""`python -P -S -m sockd.forker`: run the forker (see `sockd.forker.start`)."""

from sockd.forker import start

start.main()
