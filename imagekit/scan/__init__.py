"""The vulnerability scan between verify and sign: the Debian archive check, Trivy/Grype on the SBOM, the gate."""
