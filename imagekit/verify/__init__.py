"""Boot-and-verify: the in-image probe, the pin/policy comparison and report, and the Docker host."""
