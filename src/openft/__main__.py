"""`python -m openft` is the same as the `openft` console script."""

from openft.cli import main

if __name__ == "__main__":
    main()
