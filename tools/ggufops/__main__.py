"""`python -m ggufops`."""

from ggufops.cli import main

if __name__ == "__main__":
    main()
