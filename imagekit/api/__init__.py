"""The functions the CLI calls. Each takes plain arguments, returns data, raises ImagekitError subclasses."""
