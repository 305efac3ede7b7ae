"""`python -m jobwire ...` is the `jobwire` command."""

from jobwire.cli import main

if __name__ == "__main__":
    main()
