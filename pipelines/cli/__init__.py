"""The command line: options, the runner, the Dataflow flex-template entry point."""
