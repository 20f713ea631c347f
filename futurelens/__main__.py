"""`python -m futurelens`: the same command line as `futurelens`."""

from .cli import main

main()
