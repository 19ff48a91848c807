"""`python -m pipelines …` is the `medprep` command."""
import sys

from pipelines.cli import main

sys.exit(main())
