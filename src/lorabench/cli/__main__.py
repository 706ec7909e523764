"""`python -m lorabench.cli`: the same command as `lorabench`."""

from lorabench.cli import main

# The guard keeps a process that multiprocessing spawns from running the CLI (as lorabench/__main__.py's).
if __name__ == "__main__":
    main()
