"""The example TTS-shaped inference service: a tiny PyTorch model served over stdlib HTTP."""
