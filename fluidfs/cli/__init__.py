"""The ``fluidfs`` command line: parser and dispatch (main), shared flags (options), one module per command."""
