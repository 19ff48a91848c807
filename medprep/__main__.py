"""`python -m medprep …` is the `medprep` command."""

import sys

from medprep.pipelines.cli.main import main

sys.exit(main())
