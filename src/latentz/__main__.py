"""`python -m latentz` (and `torchrun -m latentz`) run the command line."""

from latentz.cli import app

if __name__ == "__main__":
    app()
