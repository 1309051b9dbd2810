"""One wrapper per external tool; process.py is the only place that starts subprocesses."""
