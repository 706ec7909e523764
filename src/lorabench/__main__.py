"""`python -m lorabench` (and so `torchrun -m lorabench`, `accelerate launch -m lorabench`) runs the CLI."""

from lorabench.cli import main

# The guard keeps a process that multiprocessing spawns (compare trains each model in one) from running the CLI.
if __name__ == "__main__":
    main()
