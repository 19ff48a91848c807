"""`python -m medprep …` is the `medprep` command."""

from medprep.pipelines.cli.main import console_main

console_main()
