"""The nightly rebuild job."""
